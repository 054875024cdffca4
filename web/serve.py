"""Serve the face explorer (web/) and its models, to this machine only.

    python web/serve.py                 # then open the printed URL
    python web/serve.py --port 8001     # another port (0: any free one)

It serves only what the page loads: web/'s page, scripts and stylesheet, onnxruntime-web's
files from web/node_modules/onnxruntime-web/dist/, decoder.onnx, encoder.onnx,
attribute_directions.json and latent_density.json of a model folder under pretrained/ or runs/
that holds a decoder.onnx, and the two face models of pretrained/face_detector/.
Nothing else: no directory listings, no dotfiles, nothing a symbolic link leads to outside those
folders, and no answer to a Host other than 127.0.0.1, localhost or [::1] (a DNS-rebinding page
cannot read it). It binds to 127.0.0.1. Every answer carries the cross-origin isolation headers
that WebAssembly threads need (?threads=2) and no-cache, so a re-exported decoder.onnx is never
served stale. web/README.md describes the page.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import sys
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
PAGE = "web/"
HOSTS = {"127.0.0.1", "localhost", "::1"}
MODEL_FILES = {"decoder.onnx", "encoder.onnx", "attribute_directions.json", "latent_density.json"}
FACE_MODELS = ["pretrained", "face_detector"], {"face_detector.onnx", "face_landmarks.onnx"}  # align.py's
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
}


def host_allowed(host: str | None) -> bool:
    """Whether a Host header names this machine's loopback (any port: an SSH tunnel may change it)."""
    if not host:
        return False
    try:
        parts = urlsplit(f"//{host}")
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        return False
    return parts.hostname in HOSTS and not parts.username and not parts.password


def locate(root: Path, target: str) -> Path | str | HTTPStatus:
    """The file a request target names below root, a path to redirect to, or the error status."""
    if not target.startswith("/"):
        return HTTPStatus.BAD_REQUEST  # absolute-form and other request targets
    path, mark, query = target.partition("#")[0].partition("?")
    try:
        path = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return HTTPStatus.BAD_REQUEST
    if "\0" in path or "\\" in path:
        return HTTPStatus.BAD_REQUEST
    if path in ("/", "/web"):
        return "/web/" + mark + query
    parts = path[1:].split("/")
    if parts == ["web", ""]:
        parts = ["web", "index.html"]
    if any(part == "" or part.startswith(".") for part in parts):
        return HTTPStatus.NOT_FOUND  # dotfiles, "..", empty segments and directories
    *folder, name = parts
    suffix = Path(name).suffix
    dist = ["web", "node_modules", "onnxruntime-web", "dist"]
    if folder == dist and suffix in (".mjs", ".js", ".wasm"):
        base = root.joinpath(*dist)
    elif folder == ["web"] and suffix in (".html", ".css", ".js"):
        base = root / "web"
    elif folder == FACE_MODELS[0] and name in FACE_MODELS[1]:
        base = root / "pretrained"
    elif len(folder) >= 2 and folder[0] in ("pretrained", "runs") and name in MODEL_FILES:
        base = root / folder[0]
        if not (root.joinpath(*folder) / "decoder.onnx").is_file():
            return HTTPStatus.NOT_FOUND  # not an exported model folder (a run's grids hold CelebA faces)
    else:
        return HTTPStatus.NOT_FOUND
    # The real path must stay inside the real base: no symbolic link leads out of it.
    file = root.joinpath(*parts).resolve()
    return file if file.is_relative_to(base.resolve()) and file.is_file() else HTTPStatus.NOT_FOUND


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        body = self.send_head()
        if body:
            with body:
                try:
                    shutil.copyfileobj(body, self.wfile)
                except ConnectionError:  # the browser went away (a reload while loading): nothing to say
                    self.close_connection = True

    def do_HEAD(self) -> None:
        body = self.send_head()
        if body:
            body.close()

    def send_head(self):
        if not host_allowed(self.headers.get("Host")):
            self.send_error(HTTPStatus.FORBIDDEN, "serve.py answers only to http://127.0.0.1 or http://localhost")
            return None
        try:
            found = locate(self.server.root, self.path)
            body = open(found, "rb") if isinstance(found, Path) else None  # noqa: SIM115  (closed by the caller)
        except OSError:  # a name too long, a file removed meanwhile
            found, body = HTTPStatus.NOT_FOUND, None
        if isinstance(found, HTTPStatus):
            self.send_error(found)
        elif isinstance(found, str):
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", found)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", TYPES.get(found.suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(os.fstat(body.fileno()).st_size))
            self.end_headers()
        return body

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        if not self.server.quiet:
            super().log_message(format, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, port: int, quiet: bool):
        self.root = root
        self.quiet = quiet
        super().__init__(("127.0.0.1", port), Handler)


def make_server(root: str | Path = REPO, port: int = 8000, quiet: bool = False) -> Server:
    """A server for the repository at `root` (not yet serving: call serve_forever). Port 0: a free port."""
    return Server(Path(root), port, quiet)


def page_url(server: Server, page: str = PAGE) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{page}"


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 0 to 65535")
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve the face explorer and its models on http://127.0.0.1 (this machine only).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--port", type=port_number, default=8000, help="port (0: any free port)")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    args = parser.parse_args(argv)
    if not (REPO / "web" / "node_modules" / "onnxruntime-web").is_dir():
        print("note: web/node_modules is missing; run `npm ci` in web/ first, or the page cannot load onnxruntime-web")
    try:
        server = make_server(REPO, args.port, args.quiet)
    except OSError as error:
        sys.exit(
            f"error: cannot listen on 127.0.0.1:{args.port} ({error.strerror}); give another --port (0: any free one)"
        )
    print(f"face explorer: {page_url(server)}  (Ctrl+C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
