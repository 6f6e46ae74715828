"""`tunelab ui` driven in a real headless Chromium (Debian's, through Playwright): upload a CSV, map its columns,
compare two methods on the tiny BERT, watch, read the results and ask the playground; and bad uploads, which show
the CLI's own line while the server goes on. Screenshots go to the test's tmp_path."""
from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import tiny_sentences
from tunelab.api import predict

CHROMIUM = "/usr/bin/chromium"
LOCAL = {"127.0.0.1", "localhost"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`tunelab ui` in its own process, as a user starts it; yields (url, output folder)."""
    folder = tmp_path_factory.mktemp("ui")
    port = _free_port()
    output = folder / "comparisons"
    log = (folder / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "ui", "--port", str(port), "--output",
                                str(output)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert process.poll() is None, (folder / "server.log").read_text()
            assert time.time() < deadline, "the page did not answer within 120 s"
            time.sleep(0.3)
    yield url, output, port
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # a test dependency: missing, the test fails, never skips
    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture
def page(browser, server):
    """A fresh page that records every request it makes."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.set_default_timeout(30_000)
    page.goto(server[0])
    page.locator("#upload").wait_for()
    yield page
    context.close()


def _write(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").locator("textarea, input").first.input_value()


def _upload(page, path: Path) -> None:
    """Drop a file on the upload box, clearing the one it shows first."""
    box = page.locator("#upload")
    box.wait_for()
    if box.locator("input[type=file]").count() == 0:
        box.get_by_role("button", name="Clear").click()
    box.locator("input[type=file]").set_input_files(str(path))


def _wait_value(page, elem_id: str, predicate, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while True:
        value = _value(page, elem_id)
        if predicate(value):
            return value
        assert time.time() < deadline, f"#{elem_id} still shows {value!r}"
        time.sleep(0.2)


def _checkpoint_step(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["train"]["step"]


def _wait_for(condition, describe, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, describe()
        time.sleep(0.2)


def _fill(page, elem_id: str, value: str) -> None:
    """Type into a field and leave it, as a user does."""
    field = page.locator(f"#{elem_id}").locator("textarea, input").first
    field.fill(value)
    field.blur()


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def _rows(page, elem_id: str) -> list[list[str]]:
    """A Dataframe's rows as text cells."""
    return page.locator(f"#{elem_id}").evaluate(
        "e => [...e.querySelectorAll('[role=row]')].map(r => [...r.querySelectorAll('[role=gridcell], [role=cell], td')]"
        ".map(c => c.innerText.trim())).filter(cells => cells.length)")


def _only_local(requests: list[str]) -> None:
    remote = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
              and urlparse(u).hostname not in LOCAL]
    assert not remote, f"the page fetched from outside this machine: {remote}"
    assert any(urlparse(u).hostname in LOCAL for u in requests)


def _cli_line(config_text: str, folder: Path) -> str:
    """What `tunelab train` prints for the config the page offers for download."""
    path = folder / "downloaded.yaml"
    path.write_text(config_text)
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(path)], capture_output=True, text=True,
                          cwd=folder)
    assert done.returncode == 2, done.stderr
    return done.stderr.strip().splitlines()[-1]


def _config_when(page, predicate, timeout: float = 60) -> dict:
    """The downloadable config once it shows the form's last change (each change rewrites it)."""
    deadline = time.time() + timeout
    while not predicate(config := yaml.safe_load(_download(page).split("\n", 1)[1]) or {}):
        assert time.time() < deadline, config
        time.sleep(0.3)
    return config


def _download(page, tries: int = 6) -> str:
    """The config the download button gives. Once in a `make test` run (2026-12-08) a click gave no download in
    30 s, amid the form's refreshes, which replace the button's file (not traced further): as a user
    would, the test clicks again after 5 s, six times at most."""
    from playwright.sync_api import TimeoutError as NoDownload
    for _ in range(tries - 1):
        try:
            return _download_once(page, timeout_ms=5_000)
        except NoDownload:
            pass
    return _download_once(page, timeout_ms=5_000)


def _download_once(page, timeout_ms: int) -> str:
    with page.expect_download(timeout=timeout_ms) as download:
        page.locator("#download").click()
    return Path(download.value.path()).read_text()


@pytest.mark.long(seconds=37)
def test_compare_two_methods_in_the_browser(page, server, tiny_bert, tmp_path):
    url, output, _ = server
    started = time.time()
    data = _write(tmp_path / "reviews.csv", ["sentence", "sentiment"], tiny_sentences(120))
    _upload(page, data)
    # The mapping offers the file's own columns; the label's guess is checked, then chosen by hand.
    _wait_value(page, "column-text", lambda v: v == "sentence")
    _choose(page, "column-label", "sentiment")
    _fill(page, "model", str(tiny_bert))
    _fill(page, "epochs", "2")
    _fill(page, "batch", "8")
    _fill(page, "max-length", "16")
    _fill(page, "overrides", "train.precision=fp32\ntrain.early_stopping.patience=0\ntrain.log_every=2\n"
                             "data.split.validation=0.2\ndata.split.test=0.2")
    _fill(page, "name", "browser")
    config = _config_when(page, lambda c: c.get("name") == "browser")
    _wait_value(page, "message", lambda v: v.startswith("ok"))
    assert config["data"]["columns"] == {"text": "sentence", "label": "sentiment"}
    assert config["model"] == str(tiny_bert) and config["train"]["epochs"] == 2
    assert Path(config["data"]["source"]).read_text() == data.read_text()  # the upload, kept under the output
    # Before training: the estimate and the guide's recommendation (a few timed steps per method).
    page.locator("#estimate").click()
    _wait_for(lambda: len(_rows(page, "estimates")) == 2, lambda: _rows(page, "estimates"))
    estimated = {row[0]: row[1] for row in _rows(page, "estimates")}
    assert _value(page, "advice").endswith("trainable weights.")
    page.screenshot(path=str(tmp_path / "1-setup.png"), full_page=True)

    page.locator("#start").click()
    _wait_value(page, "job-state", lambda v: "running" in v or "finished" in v, 30)
    state = _wait_value(page, "job-state", lambda v: "finished" in v or "failed" in v, 240)
    assert state.endswith("finished"), _value(page, "log")
    progress = page.locator("#progress").inner_text()
    assert progress.count("finished") == 2, progress
    assert page.locator("#curves img").count() == 1  # the learning curves, drawn from the runs' history.jsonl
    assert _value(page, "log").rstrip().endswith(f"report: {output / 'browser' / 'report.html'}")  # compare's last line
    page.screenshot(path=str(tmp_path / "2-runs.png"), full_page=True)

    page.get_by_role("tab", name="Results").click()
    recommendation = _wait_value(page, "recommendation", lambda v: v.strip() != "")
    comparison = json.loads((output / "browser" / "comparison.json").read_text())
    assert recommendation == comparison["recommendation"]["text"]  # what `tunelab compare` printed
    table = page.locator("#table").inner_text()
    for row in comparison["rows"]:  # each method's trainable weights, as in report.html and as estimated
        assert row["status"] == "ok" and f"{row['parameters']['trainable']:,}" in table
        assert estimated[row["method"]] == f"{row['parameters']['trainable']:,}"
    assert str(output / "browser") in page.locator("#comparisons").inner_text() + _value(page, "comparisons")
    assert "trainable params" in table
    figures = page.locator("#figures img")  # report.html's figures, loaded (a broken image has no width)
    _wait_for(lambda: figures.count() >= 2 and figures.first.evaluate("i => i.complete && i.naturalWidth > 100"),
              lambda: page.locator("#figures").inner_html()[:2000], 30)
    page.screenshot(path=str(tmp_path / "3-results.png"), full_page=True)

    page.get_by_role("tab", name="Playground").click()
    answers = page.locator("#answers")
    # Gradio renders a tab's content when it is first opened: a text typed at once into the new field was once lost
    # (the server got "" and answered "type a text first"; 1 of 2 fresh-clone runs). A user who retypes and asks
    # again gets the answer; so does the test, at most three times, and it checks the answer itself below.
    for _ in range(3):
        _fill(page, "playground-text", "a great lovely superb film")
        page.locator("#ask").click()
        time.sleep(1.0)  # a retry's click replaces the last "Error" with its own progress first
        deadline = time.time() + 60
        while not ("lora" in answers.inner_text() and "full" in answers.inner_text()):
            assert time.time() < deadline, answers.inner_text()
            if "Error" in answers.inner_text():
                break
            time.sleep(0.3)
        else:
            break
    assert "lora" in answers.inner_text() and "full" in answers.inner_text(), answers.inner_text()
    # Each run's label for the text is `tunelab predict`'s.
    shown = {cells[0]: cells[1] for cells in _rows(page, "answers") if len(cells) > 1}
    assert set(shown) == {"lora", "full"}, _rows(page, "answers")
    question = tmp_path / "question.jsonl"
    question.write_text(json.dumps({"sentence": "a great lovely superb film"}) + "\n")
    for method in ("lora", "full"):
        predict(output / "browser" / "runs" / method, question, tmp_path / f"{method}.jsonl")
        assert shown[method] == json.loads((tmp_path / f"{method}.jsonl").read_text())["prediction"]
    page.locator("#export").click()
    exported = _wait_value(page, "exported", lambda v: v != "", 60)
    assert exported.startswith("exported to "), exported
    assert (Path(exported.removeprefix("exported to ")) / "README.md").is_file()
    page.screenshot(path=str(tmp_path / "4-playground.png"), full_page=True)
    # A page opened later lists the comparison and opens the newest by itself.
    page.goto(url)
    page.get_by_role("tab", name="Results").click()
    assert _wait_value(page, "recommendation", lambda v: v != "") == comparison["recommendation"]["text"]
    assert _value(page, "comparisons") == str(output / "browser")
    _only_local(page.requests)
    print(f"browser comparison: {time.time() - started:.1f} s")


@pytest.mark.long(seconds=28)
def test_stop_keeps_a_checkpoint_and_resume_goes_on_from_it(page, server, tiny_bert, tmp_path):
    """A LoRA run too long to finish here (500 epochs): watched while it trains (curves drawn from its live
    history.jsonl), stopped (checkpoint kept, no run folder), resumed from that checkpoint, stopped again."""
    url, output, _ = server
    runs = output / "stopped" / "runs"
    _upload(page, _write(tmp_path / "reviews.csv", ["text", "label"], tiny_sentences(80)))
    _fill(page, "model", str(tiny_bert))
    page.locator("#methods label", has_text="full").click()  # lora alone
    _fill(page, "epochs", "500")
    _fill(page, "batch", "8")
    _fill(page, "max-length", "16")
    _fill(page, "overrides", "train.precision=fp32\ntrain.early_stopping.patience=0\ntrain.log_every=2")
    _fill(page, "name", "stopped")
    _config_when(page, lambda c: c.get("name") == "stopped")
    _wait_value(page, "message", lambda v: v.startswith("ok"))
    page.locator("#start").click()
    _wait_for(lambda: page.locator("#curves img").count() and "training" in page.locator("#progress").inner_text(),
              lambda: page.locator("#progress").inner_text())
    live = [p.read_text() for p in runs.glob(".lora.partial-*/history.jsonl")]
    page.screenshot(path=str(tmp_path / "7-training-live.png"))
    page.locator("#stop").click()
    assert live and live[0].count("train_loss") >= 1  # what the curves were drawn from, while it trained
    _wait_value(page, "job-state", lambda v: v.endswith("(checkpoints kept: Resume continues)"), 60)
    first = _checkpoint_step(runs / ".lora.checkpoint")
    assert first > 0 and not (runs / "lora").exists()
    [row] = _rows(page, "progress")
    assert row[:2] == ["lora", "stopped, resumable"] and row[2].startswith(f"checkpoint at step {first} of ")
    page.screenshot(path=str(tmp_path / "8-stopped.png"), full_page=True)

    page.locator("#resume").click()
    log = runs / "lora.log"
    _wait_for(lambda: f"resumed from the checkpoint at step {first} " in log.read_text()
              and "training" in page.locator("#progress").inner_text(), lambda: log.read_text()[-2000:])
    page.locator("#stop").click()
    _wait_value(page, "job-state", lambda v: v.endswith("(checkpoints kept: Resume continues)"), 60)
    assert _checkpoint_step(runs / ".lora.checkpoint") > first


@pytest.mark.long(seconds=13)
def test_bad_uploads_show_the_cli_line_and_the_server_goes_on(page, server, tmp_path):
    url, output, _ = server
    one_column = _write(tmp_path / "one_column.csv", ["review"], [[t] for t, _ in tiny_sentences(20)])
    _upload(page, one_column)
    shown = _wait_value(page, "message", lambda v: v.startswith("error"))
    assert "no column 'label'" in shown
    _config_when(page, lambda c: c["data"]["source"].endswith("one_column.csv"))
    assert shown == _value(page, "message") == _cli_line(_download(page), tmp_path)
    page.screenshot(path=str(tmp_path / "5-bad-columns.png"), full_page=True)

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _upload(page, empty)
    shown = _wait_value(page, "message", lambda v: "empty" in v)
    _config_when(page, lambda c: c["data"]["source"].endswith("empty.csv"))
    assert shown == _value(page, "message") == _cli_line(_download(page), tmp_path)
    page.screenshot(path=str(tmp_path / "6-empty-file.png"), full_page=True)

    # The server goes on: a new page loads, and a good file is accepted.
    page.goto(url)
    good = _write(tmp_path / "good.csv", ["text", "label"], tiny_sentences(40))
    _upload(page, good)
    assert _wait_value(page, "message", lambda v: v.startswith("ok")).startswith("ok")
    _only_local(page.requests)


def test_port_in_use_is_one_line_and_status_2(server):
    _, _, port = server
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "ui", "--port", str(port)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: port {port} on 127.0.0.1 is in use; choose another with --port"
