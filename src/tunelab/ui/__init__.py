"""`tunelab ui`: a local web interface (Gradio) to configure, launch, watch and compare runs, and try them.

Offline: Gradio serves its own front-end files, the theme uses system fonts (no font CDN), and analytics are off
(GRADIO_ANALYTICS_ENABLED=False, set before Gradio is imported)."""
from __future__ import annotations

import os
from pathlib import Path


def ui(host: str = "127.0.0.1", port: int = 7860, output: str | Path = "comparisons", log=print) -> None:
    """Serve the page until interrupted; a port in use ends at once with one line (the serve command's check)."""
    from ..serve import check_port
    check_port(host, port)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SERVER_NAME", host)
    from .app import THEME, build
    Path(output).mkdir(parents=True, exist_ok=True)
    page = build(output)
    log(f"tunelab ui on http://{host}:{port} (comparisons in {Path(output).resolve()}); Ctrl-C stops it")
    page.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, quiet=True, show_error=True,
        ssr_mode=False, allowed_paths=[str(Path(output).resolve())], theme=THEME)


__all__ = ["ui"]
