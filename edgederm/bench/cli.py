"""``edgederm bench`` and ``edgederm bench-report`` (added to the main typer app by ``register``).

Exit codes of ``bench``: 0 every configuration was measured (or skipped with a reason), 1 a
configuration failed (recorded in results.jsonl with its error), 2 bad input, 3 the device
dropped mid-run (the results already measured stay in results.jsonl).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import EdgedermError


def _ints(values: Optional[List[str]], what: str) -> list[int]:
    out: list[int] = []
    for v in values or []:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise EdgedermError(f"{what} takes integers (repeatable or comma-separated), got {part!r}") from None
    return list(dict.fromkeys(out))


def _words(values: Optional[List[str]]) -> list[str]:
    return [p.strip() for v in values or [] for p in str(v).split(",") if p.strip()]


def register(app: typer.Typer) -> None:
    """Add the ``bench`` and ``bench-report`` commands to ``app``."""

    @app.command("bench")
    def bench_cmd(
        artifacts: List[Path] = typer.Argument(..., help="Artifacts (.onnx .xml .tflite .engine .pt) or folders of them (e.g. RUN/export)."),
        target: str = typer.Option("local", "--target", "-t", help="local, ssh://user@host[:port] or adb[:serial]."),
        out: Path = typer.Option(Path("bench-results"), "--out", "-o", help="Folder: results.jsonl (appended, never overwritten) and the report."),
        threads: Optional[List[str]] = typer.Option(None, "--threads", help="Thread counts, repeatable or comma-separated (default: all cores locally; the runtime's default on ssh/adb)."),
        batch: Optional[List[str]] = typer.Option(None, "--batch", help="Batch sizes, repeatable or comma-separated (default 1)."),
        warmup: int = typer.Option(10, help="Untimed runs after the first inference."),
        runs: int = typer.Option(50, help="Timed runs (at least)."),
        min_time: float = typer.Option(0.0, "--min-time", help="Keep timing until at least this many seconds have passed."),
        max_time: Optional[float] = typer.Option(None, "--max-time", help="Stop timing after this many seconds (at least one run)."),
        e2e_runs: int = typer.Option(20, "--e2e-runs", help="Image → decision runs per artifact (local, batch 1; 0 skips)."),
        image: Optional[Path] = typer.Option(None, "--image", help="JPEG for the image → decision measurement (default: a synthetic 600x450 lesion)."),
        torch_baseline: bool = typer.Option(True, "--torch-baseline/--no-torch-baseline", help="Also measure the PyTorch checkpoint an artifact was exported from (local)."),
        fma_units: int = typer.Option(2, "--fma-units", help="FMA units per core for the peak FLOP/s (not visible in cpuinfo)."),
        timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds one configuration may take."),
        remote_python: Optional[str] = typer.Option(None, "--remote-python", help="ssh: the Python that runs the runner there (default python3)."),
        identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="ssh: private key file."),
        ssh_option: Optional[List[str]] = typer.Option(None, "--ssh-option", help="ssh: extra -o option (e.g. StrictHostKeyChecking=accept-new); repeatable."),
        remote_dir: Optional[str] = typer.Option(None, "--remote-dir", help="ssh/adb: working folder on the device."),
        keep_remote: bool = typer.Option(False, "--keep-remote", help="ssh/adb: leave the copied files on the device."),
        trtexec: Optional[bool] = typer.Option(None, "--trtexec/--no-trtexec", help="ssh: time ONNX models with trtexec (default: when the host has it)."),
        benchmark_model: Optional[Path] = typer.Option(None, "--benchmark-model", help="adb: LiteRT's benchmark_model binary for the device."),
        delegate: Optional[List[str]] = typer.Option(None, "--delegate", help="adb: xnnpack (default), cpu, gpu, nnapi; repeatable or comma-separated."),
        adb: Optional[str] = typer.Option(None, "--adb", help="adb: the adb executable (default: adb on PATH)."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write report.md/.html and plots after the run."),
    ) -> None:
        """Benchmark artifacts on a target: latency percentiles, cold start, memory, image → decision, GFLOP/s."""
        from .harness import run_bench
        from .targets import Settings

        from ..provenance import record_command

        record_command()
        th = _ints(threads, "--threads")
        settings = Settings(threads=th or [None], batches=_ints(batch, "--batch") or [1], warmup=warmup, runs=runs,
                            min_time_s=min_time, max_time_s=max_time, e2e_runs=e2e_runs,
                            image=str(image) if image else None, fma_units=fma_units, timeout_s=timeout)
        if image is not None and not image.is_file():
            raise EdgedermError(f"image not found: {image}")
        options = dict(remote_python=remote_python, identity=str(identity) if identity else None,
                       ssh_options=ssh_option or None, remote_dir=remote_dir, keep_remote=keep_remote or None,
                       trtexec=trtexec, benchmark_model=str(benchmark_model) if benchmark_model else None,
                       delegates=_words(delegate) or None, adb=adb)
        results = run_bench(artifacts, target, out, settings, torch_baseline=torch_baseline, target_options=options)
        from .report import format_ms, short_label

        for r in results:
            lat = r.get("latency_ms") or {}
            what = f"{short_label(r)} · {r['runtime']}" + (f" [{r['delegate']}]" if r.get("delegate") else "") + \
                   f" · {r.get('threads') or 'default'} thr · b{r['batch']}"
            if r["status"] == "ok":
                typer.echo(f"{what}: p50 {format_ms(lat.get('p50', lat.get('mean')))} ms, p99 {format_ms(lat.get('p99'))} ms, "
                           f"load {format_ms(r.get('load_ms'))} ms")
            else:
                typer.echo(f"{what}: {r['status']}: {r.get('error')}", err=r["status"] == "error")
        typer.echo(f"results: {Path(out) / 'results.jsonl'}")
        if report:
            from .report import write_report

            paths = write_report(out)
            typer.echo(f"report: {paths['markdown']} and {paths['html']}")
        if any(r["status"] == "error" for r in results):
            raise typer.Exit(1)

    @app.command("bench-report")
    def bench_report_cmd(out: Path = typer.Argument(..., help="A bench folder (with results.jsonl).")) -> None:
        """Write report.md, report.html and plots/*.png for a bench folder."""
        from .report import write_report

        paths = write_report(out)
        typer.echo(str(paths["markdown"]))
        typer.echo(str(paths["html"]))
