"""Serve the face explorer (web/) and the models from the repository root, on this machine only.

    python web/serve.py                 # then open the printed URL
    python web/serve.py --port 8001     # another port (0: any free one)

A plain static file server (Python's http.server) with three additions the page needs or
benefits from:
- Cross-Origin-Opener-Policy / Cross-Origin-Embedder-Policy headers, so the page is
  cross-origin isolated and onnxruntime-web may use WebAssembly threads (?threads=2);
- no-cache headers, so an edited page or a re-exported decoder.onnx is never served stale;
- the MIME types of .mjs, .wasm and .onnx, which older Pythons do not know.
It binds to 127.0.0.1 by default: the repository root holds run folders, which may contain
CelebA images, so it is not meant to be exposed to a network. Any static server with the
right MIME types works too (e.g. `python -m http.server` in the repository root), without
the threads option.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = "web/"


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
        ".json": "application/json",
    }

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    quiet = False


def make_server(root: str | Path = REPO, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> Server:
    """A server for `root` (not yet serving: call serve_forever). Port 0 picks a free port."""
    server = Server((host, port), functools.partial(Handler, directory=str(root)))
    server.quiet = quiet
    return server


def page_url(server: Server, page: str = PAGE) -> str:
    host, port = server.server_address[:2]
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}/{page}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve the face explorer and the models from the repository root.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (keep it local: see the docstring)")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    args = parser.parse_args(argv)
    if not (REPO / "web" / "node_modules" / "onnxruntime-web").is_dir():
        print("note: web/node_modules is missing; run `npm ci` in web/ first, or the page cannot load onnxruntime-web")
    try:
        server = make_server(REPO, args.host, args.port, args.quiet)
    except OSError as error:
        sys.exit(f"cannot listen on {args.host}:{args.port} ({error.strerror}); try --port 0")
    print(f"face explorer: {page_url(server)}  (Ctrl+C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
