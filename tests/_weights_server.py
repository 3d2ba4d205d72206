"""A local HTTP server on 127.0.0.1 for the weights tests, and an isolated weights environment.

`server.routes[path] = (mode, body)`: mode "ok" serves the bytes `body`, "file" the file at the
path `body` (streamed); "404"; "500_once" (a 500 on the
first request, then the body); "cut" / "cut_once" (half the body, then the connection closes,
always / on the first request); "slow" (the body after `SLOW_S` seconds). `server.hits` counts
requests per path.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List

import pytest

from c3dfeat.weights import fetch, paths

SLOW_S = 0.5
ENV_VARS = ("C3DFEAT_WEIGHTS", "C3DFEAT_WEIGHTS_MIRROR", "C3DFEAT_REQUIRE_HASHES")


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real weights directories, mirrors or proxies, no retry sleeps; returns the cache dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "checkout_dir", lambda: None)
    monkeypatch.setattr(fetch, "RETRY_BACKOFF_S", (0.0, 0.0))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path / "xdg" / "c3dfeat" / "weights"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's name for the GET handler
        srv = self.server
        srv.hits[self.path] += 1  # type: ignore[attr-defined]
        mode, body = srv.routes.get(self.path, ("404", b""))  # type: ignore[attr-defined]
        first = srv.hits[self.path] == 1  # type: ignore[attr-defined]
        if mode == "404" or (mode == "500_once" and first):
            self.send_error(404 if mode == "404" else 500)
            return
        if mode == "file":  # body is a Path: streamed, never held in memory (full-size models)
            self.send_response(200)
            self.send_header("Content-Length", str(body.stat().st_size))
            self.end_headers()
            with open(body, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
            return
        if mode == "slow":
            time.sleep(SLOW_S)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut" or (mode == "cut_once" and first):
            self.wfile.write(body[: len(body) // 2])  # then the connection is closed (HTTP/1.0)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.routes, srv.hits = {}, Counter()  # type: ignore[attr-defined]
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port_url(path: str = "/tiny.pth") -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused: an offline machine)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"


def all_files(d: Path) -> List[str]:
    """Every file under `d` (hidden temporaries included), relative, sorted."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.exists() else []
