"""``run_bench``: artifacts x target x settings → results appended to ``<out>/results.jsonl``.

For every job the target plans, the raw measurement is completed with what the harness knows
about the artifact (format, precision, size, hash, the card's BACC) and the derived numbers
(achieved GFLOP/s against the peak of the cores used), stamped with the run id, the bench
command and the command that actually ran, and appended to the store before the next job starts.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shlex
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

from ..errors import EdgedermError
from .store import ResultsStore
from .targets import Artifact, DeviceDropError, Job, JobError, Settings, Target, expand_artifacts, load_artifact, make_target

log = logging.getLogger(__name__)


def bench_command() -> str:
    """The command line that started this bench (``edgederm bench ...`` when run from the CLI)."""
    from ..provenance import command

    return command() or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def torch_baselines(artifacts: list[Artifact]) -> list[Path]:
    """Source checkpoints named by the exported artifacts' cards that still exist (PyTorch eager
    is the baseline every export is compared with)."""
    have = {a.path.resolve() for a in artifacts}
    out: list[Path] = []
    for a in artifacts:
        src = ((a.card.artifact or {}).get("source") or {}) if a.card is not None else {}
        ck = src.get("checkpoint")
        if ck and Path(ck).is_file() and Path(ck).resolve() not in have:
            have.add(Path(ck).resolve())
            out.append(Path(ck))
    return out


def reference_accuracy(artifacts: list[Artifact], checkpoint: Path) -> dict[str, Any] | None:
    """The FP32 checkpoint's BACC as the export gate measured it (the reference every artifact
    exported from it was compared with, on the same validation images)."""
    for a in artifacts:
        if a.card is None:
            continue
        src = ((a.card.artifact or {}).get("source") or {}).get("checkpoint")
        gate = (a.card.metrics or {}).get("gate") or {}
        ref = gate.get("reference_bacc")
        if src and Path(src).resolve() == checkpoint.resolve() and isinstance(ref, dict) and ref.get("value") is not None:
            return {"bacc": ref["value"], "lo": ref.get("lo"), "hi": ref.get("hi"),
                    "source": f"export gate reference ({gate.get('split', 'val')}, n={gate.get('n')})"}
    return None


def _record(job: Job, target: Target, run_id: str, command: str, raw: dict[str, Any] | None, *,
            status: str = "ok", error: str | None = None) -> dict[str, Any]:
    a = job.artifact
    rec: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "run_id": run_id,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": status,
        "error": error,
        "target": target.name,
        "target_kind": target.kind,
        "artifact": a.info,
        "runtime": job.runtime,
        "delegate": job.delegate,
        "threads": job.threads,
        "batch": job.batch,
        "accuracy": a.accuracy,
        "flops": a.flops,
        "command": command,
    }
    if raw is None:
        return rec
    raw = dict(raw)
    for key in ("threads", "batch", "runtime", "model", "command"):
        raw.pop(key, None)  # the job's values are the ones asked for (the runner echoes them); exec_command says what ran
    rec.update(raw)
    lat = rec.get("latency_ms") or {}
    p50 = lat.get("p50") or lat.get("mean")
    peak = (rec.get("env") or {}).get("peak")
    if a.flops and p50:
        achieved = a.flops["per_image"] * job.batch / (p50 / 1e3) / 1e9
        rec["gflops"] = {"achieved": achieved, "at": "p50" if lat.get("p50") else "mean",
                         "peak": (peak or {}).get("gflops"),
                         "fraction_of_peak": achieved / peak["gflops"] if peak and peak.get("gflops") else None}
    return rec


def run_bench(
    artifacts: list[str | Path],
    target: str | Target = "local",
    out: str | Path = "bench-results",
    settings: Settings | None = None,
    *,
    torch_baseline: bool = True,
    target_options: dict[str, Any] | None = None,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark ``artifacts`` (files or folders) on ``target``; every result is appended to
    ``<out>/results.jsonl`` as soon as it is measured. Returns this run's results.

    A device that drops mid-run raises one ``EdgedermError`` line that says how many results
    were kept; a configuration that fails is recorded with ``status: error`` and the run goes on.
    """
    settings = settings or Settings()
    store = ResultsStore(out)
    tgt = target if isinstance(target, Target) else make_target(target, **(target_options or {}))
    paths = expand_artifacts(list(artifacts))
    arts = [load_artifact(p) for p in paths]
    if torch_baseline and tgt.kind == "local":
        for p in torch_baselines(arts):
            base = load_artifact(p)
            if base.accuracy is None:
                base.accuracy = reference_accuracy(arts, p)
            arts.append(base)
    run_id = uuid.uuid4().hex[:12]
    command = bench_command()
    results: list[dict[str, Any]] = []
    tmp = None
    if settings.image is None and settings.e2e_runs > 0 and tgt.kind == "local":
        from .measure import synthetic_jpeg

        tmp = tempfile.TemporaryDirectory(prefix="edgederm-bench-")
        settings = _with_image(settings, str(synthetic_jpeg(Path(tmp.name) / "lesion-600x450.jpg")))
    try:
        tgt.setup()
        jobs = tgt.plan(arts, settings)
        from tqdm import tqdm

        bar = tqdm(jobs, desc=f"bench {tgt.name}", unit="config", disable=None if progress else True, file=sys.stderr)
        for job in bar:
            bar.set_postfix_str(job.label[:60])
            if job.skip:
                log.info("skipped %s: %s", job.label, job.skip)
                rec = _record(job, tgt, run_id, command, None, status="skipped", error=job.skip)
            else:
                try:
                    raw = tgt.run(job, settings)
                except DeviceDropError as e:
                    bar.close()
                    kept = len(results)
                    raise EdgedermError(f"{e} — stopped; {kept} result(s) of this run kept in {store.path}",
                                        exit_code=DeviceDropError.exit_code) from None
                except JobError as e:
                    log.warning("%s", e)
                    rec = _record(job, tgt, run_id, command, None, status="error", error=str(e))
                else:
                    rec = _record(job, tgt, run_id, command, raw)
            store.append(rec)
            results.append(rec)
            if on_result is not None:
                on_result(rec)
    finally:
        tgt.teardown()
        if tmp is not None:
            tmp.cleanup()
    return results


def _with_image(s: Settings, image: str) -> Settings:
    from dataclasses import replace

    return replace(s, image=image)
