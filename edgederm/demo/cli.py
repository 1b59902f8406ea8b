"""``edgederm serve-demo`` (added to the main typer app by ``register``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``serve-demo`` command to ``app``."""

    @app.command("serve-demo")
    def serve_demo_cmd(
        artifact: Path = typer.Argument(..., help="An exported .onnx artifact (float32 input), e.g. RUN/export/onnx/model.onnx."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
        port: int = typer.Option(8000, "--port", "-p", help="Port (0 picks a free one)."),
        ort_dir: Optional[Path] = typer.Option(
            None, "--ort-dir",
            help="onnxruntime-web from npm: its dist folder, a node_modules folder or an npm --prefix "
                 "(default: $EDGEDERM_NODE_MODULES, else build/web-demo/node_modules).",
        ),
        allow_host: Optional[List[str]] = typer.Option(
            None, "--allow-host",
            help="Also answer requests for this host name (Host header); repeatable. Loopback names and the --host address always work.",
        ),
        timeout: float = typer.Option(20.0, "--timeout", help="Seconds a connection may stay idle or half-sent before it is closed."),
        max_connections: int = typer.Option(32, "--max-connections", help="Connections served at once; more get 503."),
    ) -> None:
        """Serve the browser demo: the model runs in the page (onnxruntime-web), with the card's preprocessing and decision rule."""
        from .serve import serve

        serve(artifact, host=host, port=port, ort_dir=ort_dir, timeout=timeout, max_connections=max_connections,
              allow_hosts=allow_host or ())
