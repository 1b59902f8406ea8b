"""``edgederm serve-demo``: the browser demo for one exported ONNX artifact.

A small static server (the standard library's ``ThreadingHTTPServer``) for the page in ``web/``,
the artifact's bytes (``/model.onnx``), its card as edgederm's card loader reads it
(``/card.json`` — the one source of truth for preprocessing, TTA, decision rule and metrics) and
the onnxruntime-web files from a local npm install (``/ort/...``). The page runs the model in the
browser with onnxruntime-web's WASM backend; nothing is uploaded anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import EdgedermError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
#: The npm packages the demo and its browser test were checked with.
ORT_WEB_VERSION = "1.30.0"
PLAYWRIGHT_CORE_VERSION = "1.61.1"  # the last release whose engines allow node 18 (Debian 12)
DEFAULT_NODE_PREFIX = Path("build/web-demo")
NPM_INSTALL = (
    f"npm install --prefix {DEFAULT_NODE_PREFIX} --save-exact onnxruntime-web@{ORT_WEB_VERSION} "
    f"playwright-core@{PLAYWRIGHT_CORE_VERSION}"
)
# The WASM build the page loads (ort.wasm.min.js) imports these two files at run time.
ORT_REQUIRED = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".map": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


def find_ort_dist(ort_dir: str | os.PathLike[str] | None = None) -> Path:
    """The onnxruntime-web ``dist`` folder: ``ort_dir``, else ``$EDGEDERM_NODE_MODULES``, else
    ``build/web-demo/node_modules`` under the current folder.

    ``ort_dir`` may be the dist folder itself, a ``node_modules`` folder or an npm ``--prefix``.
    """
    if ort_dir is not None:
        base, where = Path(ort_dir), f"--ort-dir {ort_dir}"
    elif os.environ.get("EDGEDERM_NODE_MODULES"):
        base, where = Path(os.environ["EDGEDERM_NODE_MODULES"]), f"EDGEDERM_NODE_MODULES={os.environ['EDGEDERM_NODE_MODULES']}"
    else:
        base, where = DEFAULT_NODE_PREFIX / "node_modules", str(DEFAULT_NODE_PREFIX / "node_modules")
    for cand in (base, base / "onnxruntime-web" / "dist", base / "node_modules" / "onnxruntime-web" / "dist"):
        if all((cand / name).is_file() for name in ORT_REQUIRED):
            return cand.resolve()
    raise EdgedermError(f"onnxruntime-web not found in {where}: run `{NPM_INSTALL}` (or pass --ort-dir)")


def demo_card(artifact: str | os.PathLike[str]) -> dict[str, Any]:
    """The card the page uses, checked for what the browser demo can run."""
    from ..card import load_card

    path = Path(artifact)
    if path.suffix.lower() != ".onnx":
        raise EdgedermError(f"{path.name}: the web demo runs ONNX artifacts (.onnx); export one with the onnx target")
    if not path.is_file():
        raise EdgedermError(f"{path}: no such file")
    card = load_card(path)
    if card.preprocessing.dtype != "float32":
        raise EdgedermError(
            f"{path.name}: input dtype {card.preprocessing.dtype}: the web demo runs float32-input ONNX models "
            "(use the onnx or onnx-fp16 export)"
        )
    if card.model.get("segmenter"):
        raise EdgedermError(f"{path.name}: cards with a segmentation stage are not supported by the web demo")
    if card.model.get("combine") == "logit_stacking":
        raise EdgedermError(f"{path.name}: stacked ensembles are not supported by the web demo")
    return card.to_dict()


class DemoServer(ThreadingHTTPServer):
    """Serves the page, one artifact, its card and onnxruntime-web."""

    daemon_threads = True

    def __init__(self, artifact: Path, ort_dist: Path, host: str, port: int) -> None:
        self.artifact = artifact
        self.ort_dist = ort_dist
        card = demo_card(artifact)
        from PIL import __version__ as pillow_version

        from .. import __version__

        self.routes: dict[str, tuple[str, bytes | Path]] = {
            "/card.json": ("application/json", json.dumps(card).encode()),
            # The page resizes like the Pillow of the Python runtime that serves it (see web/edgederm.js).
            "/demo.json": ("application/json", json.dumps(
                {"edgederm": __version__, "pillow": pillow_version, "artifact": artifact.name}).encode()),
            "/model.onnx": (MIME[".onnx"], artifact),
            "/": (MIME[".html"], WEB_DIR / "index.html"),
        }
        for f in WEB_DIR.iterdir():
            if f.is_file() and f.suffix in MIME:
                self.routes[f"/{f.name}"] = (MIME[f.suffix], f)
        for f in ort_dist.iterdir():
            if f.is_file() and f.name.startswith("ort") and f.suffix in (".js", ".mjs", ".wasm", ".map"):
                self.routes[f"/ort/{f.name}"] = (MIME[f.suffix], f)
        super().__init__((host, port), _Handler)

    @cached_property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(body=False)

    def _respond(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        route = self.server.routes.get(path)
        if route is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not part of the demo")
            return
        ctype, content = route
        try:
            data = content.read_bytes() if isinstance(content, Path) else content
        except OSError as e:
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot read {path}: {e.strerror}")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        # Re-exported artifacts keep their name: never let the browser show a stale model.
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


def make_server(
    artifact: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ort_dir: str | os.PathLike[str] | None = None,
) -> DemoServer:
    """A bound (not yet running) demo server; ``port=0`` picks a free port (see ``.url``)."""
    ort_dist = find_ort_dist(ort_dir)
    try:
        return DemoServer(Path(artifact), ort_dist, host, port)
    except OSError as e:
        raise EdgedermError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def start_in_thread(server: DemoServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (stop it with ``server.shutdown()``)."""
    thread = threading.Thread(target=server.serve_forever, name="edgederm-serve-demo", daemon=True)
    thread.start()
    return thread


def serve(
    artifact: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ort_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Serve the demo until Ctrl-C."""
    server = make_server(artifact, host=host, port=port, ort_dir=ort_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the demo", host)
    log.info("web demo for %s at %s (Ctrl-C stops)", Path(artifact).name, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
