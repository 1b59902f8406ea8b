"""The main job in one command: train → distil → export → evaluate → bench → report.

``edgederm run RECIPE`` chains the stages that the individual commands run (the same functions,
no second implementation), on one run folder:

====================  ==========================================  ==================================
stage                 what (same code as)                         inputs of its content key
====================  ==========================================  ==================================
train                 the ensemble (``edgederm train``)           recipe SHA-256, data fingerprint
distill               one student (``edgederm distill``)          teacher model.pt SHA-256, options
export                every CPU target, gated (``edgederm export``) student SHA-256, options
evaluate              test split per artifact (``edgederm evaluate``) artifact + split SHA-256s
bench                 latency (``edgederm bench``)                artifact SHA-256s, options
report                one Markdown + HTML report                  every upstream key
====================  ==========================================  ==================================

A stage is skipped when its key and the SHA-256 of each output it wrote match ``RUN/pipeline.json``
(the training stage also accepts a finished run whose card records the same recipe hash and data
fingerprint). A failed stage raises after recording the error; the outputs of earlier stages
stay where they are and the next run starts at the failed stage (training resumes from its last
epoch). The recipe's optional ``pipeline:`` section sets the stage options.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import EdgedermError
from .fsutil import sha256_file, write_json_atomic
from .provenance import record_command

from .pipeline_report import EVAL_DIR, REPORT_DIR, report_items, slug, write_pipeline_report  # noqa: E402

log = logging.getLogger(__name__)

STAGES = ("train", "distill", "export", "evaluate", "bench", "report")
STATE_FILE = "pipeline.json"

# The pipeline's defaults for each section; a recipe's ``pipeline:`` entries replace them key by key.
DEFAULTS: dict[str, dict[str, Any]] = {
    # Any keyword of edgederm.train.distill.distill(); ``enabled: false`` exports the ensemble itself.
    "distill": {"enabled": True, "student": "efficientnet_lite0", "epochs": 10},
    # targets: "all" = every registered target this machine can build (others are listed as skipped).
    # gate: any other Tolerances field (e.g. min_class_support); fidelity_data: a folder of images
    # not used for training, for the gate's label-free rules (${EDGEDERM_DATA} is expanded).
    "export": {"targets": "all", "recipe": "default", "options": {}, "tolerance_bacc": 1.0,
               "tolerance_mel_sens": 2.0, "tolerance_class": 5.0, "gate": {}, "fidelity_data": None},
    "evaluate": {"split": "test"},
    "bench": {"threads": None, "batch": [1], "warmup": 10, "runs": 50, "e2e_runs": 20, "teacher": True},
    "gradcam": {"n_images": 8},
}


@dataclass
class PipelineConfig:
    distill: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["distill"]))
    export: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["export"]))
    evaluate: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["evaluate"]))
    bench: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["bench"]))
    gradcam: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["gradcam"]))

    @classmethod
    def from_section(cls, section: dict[str, Any] | None, where: str = "recipe") -> "PipelineConfig":
        section = dict(section or {})
        unknown = sorted(set(section) - set(DEFAULTS))
        if unknown:
            raise EdgedermError(f"{where}: unknown pipeline sections {unknown}; allowed: {sorted(DEFAULTS)}")
        out: dict[str, dict[str, Any]] = {}
        for name, default in DEFAULTS.items():
            given = section.get(name) or {}
            if not isinstance(given, dict):
                raise EdgedermError(f"{where}: pipeline.{name} must be a mapping, got {given!r}")
            allowed = set(default) | (_distill_keys() if name == "distill" else set())
            bad = sorted(set(given) - allowed)
            if bad:  # checked before training starts, not after it
                raise EdgedermError(f"{where}: unknown keys in pipeline.{name}: {bad}; allowed: {sorted(allowed)}")
            out[name] = {**default, **given}
        if out["evaluate"]["split"] not in ("val", "test"):
            raise EdgedermError(f"{where}: pipeline.evaluate.split must be val or test")
        gate = out["export"].get("gate") or {}
        from .export.gate import Tolerances

        fields = set(Tolerances.__dataclass_fields__) - {"bacc_pp", "mel_sens_pp", "class_pp"}
        bad = sorted(set(gate) - fields) if isinstance(gate, dict) else ["(not a mapping)"]
        if bad:
            raise EdgedermError(f"{where}: unknown keys in pipeline.export.gate: {bad}; allowed: {sorted(fields)}")
        Tolerances(**gate)  # values checked now, not after training
        return cls(**out)


def _distill_keys() -> set[str]:
    """Keyword options of ``distill()`` a recipe may set (the run folder and resume are the pipeline's)."""
    import inspect

    from .train.distill import distill

    return set(inspect.signature(distill).parameters) - {"run_dir", "resume"}


def _expand(path: Any) -> str | None:
    """A recipe path with environment variables expanded (an unset one is an error)."""
    if path in (None, ""):
        return None
    s = os.path.expandvars(str(path))
    if "$" in s:
        raise EdgedermError(f"pipeline path {path!r} names an unset environment variable (e.g. export EDGEDERM_DATA=/path/to/data)")
    return s


def _as_list(x: Any) -> list[Any]:
    return [] if x in (None, "") else list(x) if isinstance(x, (list, tuple)) else [x]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# -- state --------------------------------------------------------------------------------------
class State:
    """``RUN/pipeline.json``: per stage its content key, outputs (path → SHA-256), time and status."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / STATE_FILE
        self.doc: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            try:
                self.doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("%s is unreadable; every stage is checked from scratch", self.path)
        self.doc.setdefault("stages", {})

    def entry(self, stage: str) -> dict[str, Any]:
        return self.doc["stages"].get(stage, {})

    def up_to_date(self, stage: str, key: str) -> bool:
        e = self.entry(stage)
        if e.get("status") != "done" or e.get("key") != key:
            return False
        for rel, sha in (e.get("outputs") or {}).items():
            p = self.run_dir / rel
            if not p.is_file() or sha256_file(p) != sha:
                log.info("%s: %s changed or is missing; re-running", stage, rel)
                return False
        return True

    def record(self, stage: str, **fields_: Any) -> None:
        self.doc["stages"][stage] = {**fields_, "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(self.path, self.doc)

    def outputs(self, paths: Sequence[Path]) -> dict[str, str]:
        return {p.resolve().relative_to(self.run_dir.resolve()).as_posix(): sha256_file(p) for p in paths}


def _failure(e: BaseException) -> dict[str, Any]:
    """pipeline.json's record of a stage that did not finish: interrupted (Ctrl-C, SIGTERM) or failed."""
    if isinstance(e, KeyboardInterrupt):
        return {"status": "interrupted", "error": f"interrupted by {e.args[0] if e.args else 'SIGINT'}"}
    return {"status": "failed", "error": str(e).splitlines()[0] if str(e) else type(e).__name__}


@dataclass
class StageResult:
    name: str
    status: str  # ran | skipped (up to date) | off
    seconds: float = 0.0
    note: str = ""


# -- the driver ----------------------------------------------------------------------------------
def run_pipeline(
    recipe: str | Path,
    *,
    data: str | None = None,
    out: str | None = None,
    name: str | None = None,
    force: bool = False,
    threads: int | None = None,
    until: str | None = None,
    progress: bool = True,
) -> Path:
    """Run (or bring up to date) every stage for ``recipe``; returns the report's Markdown path."""
    from .train import load_recipe

    if until is not None and until not in STAGES:
        raise EdgedermError(f"--until must be one of {', '.join(STAGES)}, got {until!r}")
    cfg = load_recipe(recipe, out=out, name=name, data=data)
    if cfg.seeds or cfg.variants or cfg.cv_folds > 1:
        raise EdgedermError(f"{recipe}: `edgederm run` needs a single-run recipe (no seeds, variants or cv_folds); use `edgederm train`")
    pcfg = PipelineConfig.from_section(cfg.pipeline, str(recipe))
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir = cfg.run_dir
    ctx = _Ctx(cfg=cfg, pcfg=pcfg, run_dir=run_dir, threads=threads or cfg.threads, progress=progress)
    later: list[tuple[str, Callable[[_Ctx, State], StageResult]]] = [
        ("distill", _distill), ("export", _export), ("evaluate", _evaluate), ("bench", _bench), ("report", _report),
    ]
    t0 = time.perf_counter()
    res = _train(ctx, force=force)  # records itself: the run folder may have been moved aside
    state = State(run_dir)
    for stage, fn in [("train", None), *later]:
        if fn is not None:
            try:
                res = fn(ctx, state)
            except BaseException as e:
                state.record(stage, **_failure(e))
                raise
        ctx.results.append(res)
        log.info("stage %-8s %s (%.0f s)%s", stage, res.status, res.seconds, f": {res.note}" if res.note else "")
        if until == stage:
            break
    total = time.perf_counter() - t0
    state.doc["last_run"] = {"seconds": total, "stages": [r.__dict__ for r in ctx.results]}
    write_json_atomic(state.path, state.doc)
    return run_dir / REPORT_DIR / "report.md"


@dataclass
class _Ctx:
    cfg: Any
    pcfg: PipelineConfig
    run_dir: Path
    threads: int | None
    progress: bool
    results: list[StageResult] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def teacher(self) -> Path:
        return self.run_dir / "model.pt"

    @property
    def student_dir(self) -> Path | None:
        d = self.pcfg.distill
        if not d.get("enabled", True):
            return None
        return Path(d["out"]) if d.get("out") else self.run_dir / f"distill-{d['student']}"

    @property
    def deployable(self) -> Path:
        """The checkpoint the export stage converts: the student, or the ensemble without distillation."""
        sd = self.student_dir
        return sd / "model.pt" if sd is not None else self.teacher

    @property
    def export_dir(self) -> Path:
        return self.run_dir / "export"


# -- stages --------------------------------------------------------------------------------------
def _train(ctx: _Ctx, *, force: bool) -> StageResult:
    from .card import load_card
    from .train import train
    from .train.run import read_data

    cfg = ctx.cfg
    t0 = time.perf_counter()
    fingerprint = read_data(cfg).fingerprint()
    rsha = cfg.content_sha256()
    key = _digest({"recipe": rsha, "data": fingerprint})
    ctx.keys["train"] = key
    ckpt = ctx.teacher
    if ckpt.exists():
        card = load_card(ckpt)
        had = card.provenance.get("recipe_sha256")
        if had is None and (ctx.run_dir / "recipe.yaml").exists():
            # A run trained before cards recorded the hash: its recipe.yaml is the same record.
            import yaml

            from .train.config import recipe_content_sha256

            had = recipe_content_sha256(yaml.safe_load((ctx.run_dir / "recipe.yaml").read_text(encoding="utf-8")) or {})
        same = had == rsha and card.data.get("fingerprint") == fingerprint
        if same and (ctx.run_dir / "metrics.json").exists():
            st = State(ctx.run_dir)
            st.record("train", status="done", key=key, outputs=st.outputs([ckpt]), seconds=st.entry("train").get("seconds"))
            return StageResult("train", "skipped", time.perf_counter() - t0, "up to date (recipe and data hashes match the card)")
        why = "the recipe" if had != rsha else "the data"
        if not force:
            raise EdgedermError(f"{ctx.run_dir} was trained from a different {why.split()[-1]}; "
                                f"re-run with --force to retrain (the old run is kept as {ctx.run_dir.name}.prev-*)")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = ctx.run_dir.with_name(f"{ctx.run_dir.name}.prev-{stamp}")
        ctx.run_dir.rename(aside)
        log.info("%s changed: the old run moved to %s", why, aside)
    resume = ctx.run_dir.joinpath("members").exists()  # an interrupted run continues from its last epoch
    record_command(f"edgederm run {cfg.name}")
    try:
        train(cfg, resume=resume)
    except BaseException as e:
        if ctx.run_dir.exists():
            State(ctx.run_dir).record("train", key=key, **_failure(e))
        raise
    secs = time.perf_counter() - t0
    st = State(ctx.run_dir)
    st.record("train", status="done", key=key, outputs=st.outputs([ckpt]), seconds=secs)
    return StageResult("train", "ran", secs, "resumed" if resume else "")


def _distill(ctx: _Ctx, state: State) -> StageResult:
    sd = ctx.student_dir
    if sd is None:
        ctx.keys["distill"] = ctx.keys["train"]
        state.record("distill", status="done", key=ctx.keys["train"], outputs={}, seconds=0.0)
        return StageResult("distill", "off", 0.0, "pipeline.distill.enabled is false: the ensemble is exported")
    from .train.distill import distill

    opts = {k: v for k, v in ctx.pcfg.distill.items() if k not in ("enabled", "out")}
    key = _digest({"teacher": sha256_file(ctx.teacher), "options": opts})
    ctx.keys["distill"] = key
    if state.up_to_date("distill", key):
        return StageResult("distill", "skipped", 0.0, "up to date")
    t0 = time.perf_counter()
    resume = False
    if sd.exists():
        prev = state.entry("distill")
        if prev.get("key") == key and not (sd / "model.pt").exists():
            resume = True  # interrupted with the same teacher and options: continue
        else:
            shutil.rmtree(sd)  # derived from another teacher or other options
    opts.setdefault("threads", ctx.threads)
    distill(ctx.run_dir, out=sd, resume=resume, **opts)
    secs = time.perf_counter() - t0
    state.record("distill", status="done", key=key, outputs=state.outputs([sd / "model.pt"]), seconds=secs)
    return StageResult("distill", "ran", secs, "resumed" if resume else "")


def _export(ctx: _Ctx, state: State) -> StageResult:
    from .export.gate import Tolerances
    from .export.run import export_run

    e = ctx.pcfg.export
    src = ctx.deployable
    key = _digest({"source": sha256_file(src), "options": e})
    ctx.keys["export"] = key
    if state.up_to_date("export", key):
        return StageResult("export", "skipped", 0.0, "up to date")
    t0 = time.perf_counter()
    tol = Tolerances(bacc_pp=float(e["tolerance_bacc"]), mel_sens_pp=float(e["tolerance_mel_sens"]),
                     class_pp=float(e["tolerance_class"]), **dict(e.get("gate") or {}))
    results = export_run(src, e["targets"], out_dir=ctx.export_dir, recipe=e["recipe"], options=e["options"] or None,
                         tolerances=tol, n_boot=ctx.cfg.n_boot, threads=ctx.threads,
                         fidelity_data=[_expand(f) for f in _as_list(e.get("fidelity_data"))] or None)
    kept = [Path(r["path"]) for r in results if r["status"] == "pass" and r.get("path")]
    secs = time.perf_counter() - t0
    counts = {s: sum(r["status"] == s for r in results) for s in dict.fromkeys(r["status"] for r in results)}
    state.record("export", status="done", key=key, seconds=secs,
                 outputs=state.outputs(kept + [ctx.export_dir / "summary.json"]), counts=counts)
    return StageResult("export", "ran", secs, ", ".join(f"{n} {s}" for s, n in counts.items()))


def _evaluate(ctx: _Ctx, state: State) -> StageResult:
    from .data.splits import apply_split, read_split_csv
    from .evaluate import evaluate
    from .runtime import load
    from .train.run import read_data

    split = ctx.pcfg.evaluate["split"]
    split_file = ctx.run_dir / "split.csv"
    items = report_items(ctx)
    key = _digest({"items": [(lab, sha256_file(p)) for lab, p in items], "split": sha256_file(split_file),
                   "which": split, "n_boot": ctx.cfg.n_boot})
    ctx.keys["evaluate"] = key
    if state.up_to_date("evaluate", key):
        return StageResult("evaluate", "skipped", 0.0, "up to date")
    t0 = time.perf_counter()
    index = read_data(ctx.cfg)
    part = apply_split(index, read_split_csv(split_file, index))[split]
    out = ctx.run_dir / EVAL_DIR
    written: list[Path] = []
    for label, path in items:
        # Exactly `edgederm evaluate PATH --split-file RUN/split.csv --split test` (seed 0, the card's TTA).
        res = evaluate(load(path, threads=ctx.threads), part, n_boot=ctx.cfg.n_boot)
        summary = {**res.summary(), "label": label, "artifact": str(path), "sha256": sha256_file(path), "split": split}
        f = out / f"{slug(label)}.json"
        write_json_atomic(f, summary)
        _save_predictions(out / f"{slug(label)}.npz", res)
        written.append(f)
    secs = time.perf_counter() - t0
    state.record("evaluate", status="done", key=key, outputs=state.outputs(written), seconds=secs)
    return StageResult("evaluate", "ran", secs, f"{len(items)} models on the {split} split (n={len(part)})")


def _save_predictions(path: Path, res: Any) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, y_true=res.y_true, y_pred=res.y_pred, probs=res.probs)
    os.replace(tmp, path)


def _bench(ctx: _Ctx, state: State) -> StageResult:
    from .bench.harness import run_bench
    from .bench.targets import Settings

    b = ctx.pcfg.bench
    arts = [p for lab, p in report_items(ctx) if lab not in ("ensemble (PyTorch)", "student (PyTorch)")]
    if b.get("teacher", True):
        arts.append(ctx.teacher)
    if not arts:
        return StageResult("bench", "off", 0.0, "no artifact to measure")
    threads = b["threads"] if b["threads"] is not None else [ctx.threads or os.cpu_count() or 1]
    threads = threads if isinstance(threads, list) else [threads]
    batches = b["batch"] if isinstance(b["batch"], list) else [b["batch"]]
    key = _digest({"artifacts": sorted(sha256_file(p) for p in arts), "options": b, "threads": threads})
    ctx.keys["bench"] = key
    if state.up_to_date("bench", key):
        return StageResult("bench", "skipped", 0.0, "up to date")
    t0 = time.perf_counter()
    settings = Settings(threads=[int(t) for t in threads], batches=[int(x) for x in batches], warmup=int(b["warmup"]),
                        runs=int(b["runs"]), e2e_runs=int(b["e2e_runs"]))
    out = ctx.run_dir / "bench"
    results = run_bench(arts, "local", out, settings, torch_baseline=True, progress=ctx.progress)
    secs = time.perf_counter() - t0
    run_ids = sorted({r.get("run_id") for r in results if r.get("run_id")})
    state.record("bench", status="done", key=key, outputs=state.outputs([out / "results.jsonl"]), seconds=secs,
                 run_ids=run_ids)
    errors = sum(r["status"] == "error" for r in results)
    return StageResult("bench", "ran", secs, f"{len(results)} configurations" + (f", {errors} failed" if errors else ""))


def _report(ctx: _Ctx, state: State) -> StageResult:
    key = _digest({k: ctx.keys.get(k) for k in STAGES[:-1]})
    ctx.keys["report"] = key
    out = ctx.run_dir / REPORT_DIR
    if state.up_to_date("report", key):
        return StageResult("report", "skipped", 0.0, "up to date")
    t0 = time.perf_counter()

    paths = write_pipeline_report(ctx, state)
    secs = time.perf_counter() - t0
    state.record("report", status="done", key=key, outputs=state.outputs([paths["markdown"], paths["results"]]), seconds=secs)
    return StageResult("report", "ran", secs, str(out))
