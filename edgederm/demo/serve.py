"""``edgederm serve-demo``: the browser demo for one exported ONNX artifact.

A small static server (the standard library's ``ThreadingHTTPServer``) for the page in ``web/``,
the artifact's bytes (``/model.onnx``), its card as edgederm's card loader reads it
(``/card.json`` — the one source of truth for preprocessing, TTA, decision rule and metrics) and
the onnxruntime-web files from a local npm install (``/ort/...``). The page runs the model in the
browser with onnxruntime-web's WASM backend; nothing is uploaded anywhere.

Hardening, since anything on this machine (and every page its browser opens) can reach the port:

* a per-connection socket timeout (``timeout``, 20 s): a half-open or idle connection is closed
  instead of holding a thread for ever;
* at most ``max_connections`` (32) connections at once; the next one gets a 503 at once;
* the ``Host`` header must be a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, any port),
  the address served on, or a name given with ``--allow-host``; anything else gets 421. A page on
  ``evil.example`` whose DNS is re-pointed to 127.0.0.1 (DNS rebinding) sends ``Host:
  evil.example`` and so cannot read ``/card.json`` or the model;
* a client that goes away mid-response (BrokenPipe, ConnectionReset) is a debug log line, not a
  traceback.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
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
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MAX_CONNECTIONS = 32
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
         b"Retry-After: 1\r\nConnection: close\r\n\r\nbusy\n")


def _host_name(header: str) -> str:
    """The name of a ``Host`` header without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.index("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h

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

    def __init__(
        self,
        artifact: Path,
        ort_dist: Path,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        allow_hosts: tuple[str, ...] | list[str] = (),
    ) -> None:
        if timeout <= 0:
            raise EdgedermError(f"--timeout must be > 0 seconds, got {timeout:g}")
        if max_connections < 1:
            raise EdgedermError(f"--max-connections must be >= 1, got {max_connections}")
        self.artifact = artifact
        self.ort_dist = ort_dist
        self.conn_timeout = float(timeout)
        self.max_connections = int(max_connections)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        names = {*LOOPBACK_NAMES, *(_host_name(h) for h in allow_hosts)}
        if host not in ("", "0.0.0.0", "::"):
            names.add(_host_name(f"[{host}]" if ":" in host else host))  # the address it was asked to serve on
        self.allowed_hosts = frozenset(names)
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

    def process_request(self, request: Any, client_address: Any) -> None:
        # A thread per connection, but only max_connections of them: the rest are told 503 now.
        if not self._slots.acquire(blocking=False):
            log.debug("%s: %d connections open; answered 503", client_address[0], self.max_connections)
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # the thread did not start
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, _DISCONNECTS):  # the client went away mid-response: nothing to report
            log.debug("%s: client disconnected (%s)", client_address[0], type(err).__name__)
            return
        log.warning("serving %s failed: %s: %s", client_address[0], type(err).__name__, err)
        log.debug("traceback", exc_info=err)


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(body=False)

    def setup(self) -> None:
        self.timeout = self.server.conn_timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    def _respond(self, *, body: bool) -> None:
        host = self.headers.get("Host")
        if host is None or _host_name(host) not in self.server.allowed_hosts:
            # 421 Misdirected Request: not a name this server answers for (DNS rebinding).
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host; serve-demo --allow-host NAME allows a name")
            log.debug("refused Host %r from %s", host, self.address_string())
            return
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
    timeout: float = DEFAULT_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    allow_hosts: tuple[str, ...] | list[str] = (),
) -> DemoServer:
    """A bound (not yet running) demo server; ``port=0`` picks a free port (see ``.url``)."""
    ort_dist = find_ort_dist(ort_dir)
    try:
        return DemoServer(Path(artifact), ort_dist, host, port, timeout=timeout, max_connections=max_connections,
                          allow_hosts=allow_hosts)
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
    timeout: float = DEFAULT_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    allow_hosts: tuple[str, ...] | list[str] = (),
) -> None:
    """Serve the demo until Ctrl-C."""
    server = make_server(artifact, host=host, port=port, ort_dir=ort_dir, timeout=timeout,
                         max_connections=max_connections, allow_hosts=allow_hosts)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the demo "
                    "(requests must name this address or an --allow-host name)", host)
    log.info("web demo for %s at %s (Ctrl-C stops)", Path(artifact).name, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        from .. import interrupt

        interrupt.expected()  # Ctrl-C is how a server stops: exit 0
        log.info("stopped")
    finally:
        server.server_close()
