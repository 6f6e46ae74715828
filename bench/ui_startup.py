"""The time from `tunelab ui` to a usable page: start the command, and from the same moment load the page in
headless Chromium (Debian's, through Playwright) until the Setup tab's file input is there; three times, each
with a fresh server and browser. Prints each figure and the median. Run: .venv/bin/python bench/ui_startup.py"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from playwright.sync_api import Error, sync_playwright


def once(folder: str) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        page = browser.new_page()
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "ui", "--port", str(port), "--output",
                                   os.path.join(folder, "comparisons")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, cwd=folder)
        try:
            while True:
                try:
                    page.goto(url, timeout=5000)
                    page.locator("#upload input[type=file]").wait_for(state="attached", timeout=10000)
                    return time.perf_counter() - started
                except Error:
                    assert server.poll() is None, "tunelab ui ended"
                    time.sleep(0.1)
        finally:
            server.terminate()
            server.wait()
            browser.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        times = [once(folder) for _ in range(3)]
    print("start to usable page (s): " + ", ".join(f"{t:.1f}" for t in times)
          + f"; median {statistics.median(times):.1f}; load average {os.getloadavg()[0]:.1f}")
