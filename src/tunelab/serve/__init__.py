"""`tunelab serve`: an HTTP service answering for one or more finished runs (`app.py`), with dynamic batching
(`batching.py`) and each base model loaded once (`models.py`).

FastAPI and uvicorn are imported here, and this package only by the `serve` command, so other commands do not
pay for them.
"""
from __future__ import annotations

import errno
import socket

from ..errors import TunelabError
from .app import Limits, create_app
from .models import load, parse_specs


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          log=print) -> None:
    """Load `runs` (`RUN` or `NAME=RUN`) and serve them until interrupted. Every run argument and the port are
    checked before any model loads, so a mistake ends at once with one line."""
    specs = parse_specs(runs)
    check_port(host, port)
    served = load(specs, log)
    import uvicorn
    log(f"serving {', '.join(served)} on http://{host}:{port} (OpenAPI schema: /docs)")
    uvicorn.run(create_app(served, limits), host=host, port=port, log_level="warning")


def check_port(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise TunelabError(f"--port must be between 1 and 65535, got {port}")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            s.bind((host, port))
    except socket.gaierror:
        raise TunelabError(f"--host {host!r} is not an address of this machine; e.g. 127.0.0.1 or 0.0.0.0") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise TunelabError(f"port {port} on {host} is in use; choose another with --port") from None
        raise TunelabError(f"cannot listen on {host}:{port}: {e.strerror}") from None


__all__ = ["serve", "create_app", "Limits", "load", "parse_specs"]
