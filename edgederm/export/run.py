"""``edgederm export RUN --target ...``: build artifacts, gate each one, keep only what passes.

For each target: build into a hidden temporary folder next to the destination, embed the card
(through the runtime backend of the format) and write the ``.card.json`` sidecar, run the
accuracy gate against the FP32 checkpoint on the validation split — the artifact under the
decision rule its card ships, the reference's — record the verdict, the SHA-256 and the size in the card — and only then move the folder to
``RUN/export/<target>/`` with one rename. A failing or interrupted export never replaces a
passing artifact: a rejected one goes to ``RUN/export/.rejected/<target>/`` with its gate report,
an interrupted one is deleted (or, after a hard kill, cleaned up by the next export).

``--recipe auto`` tries a target's recipes from fastest to safest (e.g. INT8 per-channel → INT8
with sensitive layers in float → FP16) and keeps the first that passes; the card records every
recipe tried with its gate metrics. ``--target all`` makes every target this machine can make and
reports the rest as skipped with the reason (TensorRT targets then get the CPU FP16 precheck).
A summary table (target, measured precision, size, BACC [CI], MEL sens [CI], agreement, verdict) is written to
``RUN/export/gate.md`` (and ``summary.json``).

An artifact's precision is measured from the built file (``edgederm.formats.precision``: how
many compute ops run quantized, how the weights are stored), never taken from the target's name:
an ``int8`` target whose file holds no quantized op is recorded, listed and benched as ``fp32`` /
``fp16``, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..card import ArtifactCard
from ..errors import EdgedermError
from ..fsutil import sha256_file, write_json_atomic, write_text_atomic
from .context import ExportContext
from .gate import (
    GateResult,
    InsufficientData,
    PoolPredictions,
    Predictions,
    Tolerances,
    certify_check,
    compare,
    pool_images,
    predict,
    predict_pool,
    reference_metrics,
    summary_table,
)
from .registry import PRECHECKS, Target, get_target, resolve_targets

log = logging.getLogger(__name__)

REJECTED = ".rejected"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


@dataclass
class _Attempt:
    target: Target  # the target whose build ran (a recipe may fall back to another)
    recipe: str
    options: dict[str, Any]
    tmp: Path
    path: Path
    card: ArtifactCard
    info: dict[str, Any]
    gate: GateResult | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.gate is None or self.gate.passed


def split_options(options: Mapping[str, Any] | None, targets: Sequence[Target]) -> dict[str, dict[str, Any]]:
    """Per-target options from ``{key: v}`` (every selected target that takes ``key``),
    ``{"target.key": v}`` or ``{"target": {key: v}}``. A key no selected target takes is an error."""
    per: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    for key, value in dict(options or {}).items():
        if isinstance(value, Mapping):
            t = get_target(key)
            if t.name not in per:
                raise EdgedermError(f"options given for target {t.name}, which is not being exported")
            per[t.name].update(value)
            continue
        tname, dot, opt = key.rpartition(".")
        if dot:
            t = get_target(tname)
            if t.name not in per:
                raise EdgedermError(f"option {key}: target {t.name} is not being exported")
            per[t.name][opt] = value
            continue
        takers = [t for t in targets if key in t.options]
        if not takers:
            if len(targets) == 1:
                targets[0].resolve_options({key: value})  # raises with the closest option name
            raise EdgedermError(f"no selected target takes option {key!r} (see `edgederm export --list`)")
        for t in takers:
            per[t.name][key] = value
    for t in targets:  # validate early: a typo fails before minutes of conversion
        t.resolve_options(per[t.name])
    return per


def export_run(
    run_or_checkpoint: str | Path,
    targets: str | Sequence[str] = "all",
    *,
    out_dir: str | Path | None = None,
    recipe: str = "default",
    options: Mapping[str, Any] | None = None,
    gate: bool = True,
    tolerances: Tolerances | None = None,
    precheck: bool = False,
    data: str | Path | None = None,
    data_format: str | None = None,
    split_file: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tta: bool | Sequence[str] | None = None,
    threads: int | None = None,
    fidelity_data: str | Path | Sequence[str | Path] | None = None,
) -> list[dict[str, Any]]:
    """Export a run (or a single-model checkpoint) to ``targets``; one result dict per target.

    Every artifact ships the reference's decision rule (its card's thresholds) and is gated
    under it; ``fidelity_data`` (a folder of images not used for training) adds the gate's
    label-free rules on that pool.

    ``status`` is ``pass`` (gated, kept), ``built`` (``gate=False``, kept), ``fail`` (gate
    failed; the artifact went to ``.rejected/``), ``skipped`` (this machine cannot build it;
    only under ``all``, else it raises), ``error`` (the build failed; a single requested target
    raises instead), or
    ``precheck-pass`` / ``precheck-fail`` (``precheck=True``: numerics checked, nothing kept).
    """
    if recipe not in ("default", "auto"):
        raise EdgedermError(f"--recipe must be default or auto, got {recipe!r}")
    selected, is_all = resolve_targets(targets)
    if precheck:
        lacking = [t.name for t in selected if t.name not in PRECHECKS]
        if lacking:
            raise EdgedermError(f"--precheck is available for {', '.join(PRECHECKS)}; not for {', '.join(lacking)}")
        if not gate:
            raise EdgedermError("--precheck runs the gate's numerics on the validation images; it cannot run with --no-gate")
    per_opts = split_options(options, selected)

    results: list[dict[str, Any]] = []
    plan: list[Target] = []
    for t in selected:
        reason = None if precheck else t.unavailable_reason()
        if reason is None:
            plan.append(t)
        elif is_all:
            log.info("skipped %s: %s", t.name, reason)
            results.append({"target": t.name, "status": "skipped", "verdict": "skipped", "reason": reason})
        else:
            t.check_available()  # the precise one-line error

    ctx = ExportContext.from_path(run_or_checkpoint, data=data, data_format=data_format, split_file=split_file)
    try:
        out = Path(out_dir) if out_dir is not None else ctx.run_dir / "export"
        out.mkdir(parents=True, exist_ok=True)
        ctx.export_dir = out  # type: ignore[attr-defined]
        _recover(out)
        ref: Predictions | None = None
        val_index = None
        pool: tuple[list[Path], PoolPredictions] | None = None
        tol = tolerances or Tolerances()
        if gate:
            val_index = ctx.split("val")
            # Too little validation data is refused before minutes of conversion.
            certify_check(val_index.classes, np.array(val_index.targets(), dtype=int), tol, where="the validation split")
            log.info("gate: scoring the FP32 reference %s on %d validation images", ctx.checkpoint.name, len(val_index))
            ref_model = _load(ctx.checkpoint, "torch", threads)
            ref = predict(ref_model, val_index, tta=tta, name=f"{ctx.checkpoint.name} (FP32)")
            if fidelity_data:
                train_ids = {r.image_id for r in ctx.split("train").records}
                files, excluded = pool_images(fidelity_data, exclude_ids=train_ids)
                if len(files) < tol.min_fidelity_images:
                    raise InsufficientData(f"the fidelity pool {fidelity_data} has {len(files)} images outside the training "
                                           f"split; at least {tol.min_fidelity_images} are needed (--min-fidelity-images)")
                log.info("gate: fidelity pool of %d images (%d of the training split left out)", len(files), excluded)
                pool = (files, predict_pool(ref_model, files, tta=tta, name=f"{ctx.checkpoint.name} (FP32)"))
        elif fidelity_data:
            raise EdgedermError("--fidelity-data is a gate input; it cannot be used with --no-gate")
        gated = dict(ref=ref, val_index=val_index, tolerances=tol, n_boot=n_boot, seed=seed, tta=tta, threads=threads, pool=pool)

        # Under `all`, a TensorRT target this machine cannot build gets its CPU precheck instead.
        if is_all and gate and not precheck:
            for r in results:
                if r["status"] == "skipped" and r["target"] in PRECHECKS:
                    try:
                        pre = _precheck(ctx, get_target(r["target"]), out, **gated)
                    except EdgedermError as e:  # e.g. the onnx extra is missing too
                        log.info("precheck of %s not run: %s", r["target"], e)
                        continue
                    r["precheck"] = {k: pre.get(k) for k in ("status", "gate", "reports")}
        for t in plan:
            try:
                if precheck:
                    res = _precheck(ctx, t, out, **gated)
                else:
                    res = _export_target(ctx, t, out, recipe=recipe, user_opts=per_opts[t.name], gate=gate, **gated)
            except EdgedermError as e:
                if len(plan) == 1 and not is_all:
                    raise
                res = {"target": t.name, "status": "error", "verdict": "error", "reason": str(e)}
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # a converter crashed: one line, the traceback in debug logs
                log.debug("target %s failed:\n%s", t.name, traceback.format_exc())
                msg = f"target {t.name} failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                if len(plan) == 1 and not is_all:
                    raise EdgedermError(msg) from None
                res = {"target": t.name, "status": "error", "verdict": "error", "reason": msg}
            results.append(res)
            log.info("%s: %s", t.name, res["verdict"])

        for r in results:
            r["export_dir"] = str(out)
        order = {t.name: i for i, t in enumerate(selected)}
        results.sort(key=lambda r: order.get(r["target"], len(order)))
        ref_metrics = reference_metrics(ref, n_boot=n_boot, seed=seed) if ref is not None else None
        _write_summary(ctx, out, results, ref_metrics)
    finally:
        ctx.close()
    return results


# -- one target -----------------------------------------------------------------------------------
def _export_target(
    ctx: ExportContext, t: Target, out: Path, *, recipe: str, user_opts: dict[str, Any], gate: bool, **gated: Any
) -> dict[str, Any]:
    if recipe == "auto" and t.auto:
        steps = [(r.name, get_target(r.target) if r.target else t, {**(user_opts if r.target is None else {}), **r.options})
                 for r in t.auto]
    else:
        steps = [("default" if recipe == "default" or not t.auto else recipe, t, user_opts)]
    tried: list[dict[str, Any]] = []
    keep: _Attempt | None = None
    last_failed: _Attempt | None = None
    for name, build_target, opts in steps:
        reason = build_target.unavailable_reason()
        if reason:
            tried.append({"recipe": name, "target": build_target.name, "status": "skipped", "reason": reason})
            continue
        att = _attempt(ctx, t, build_target, name, build_target.resolve_options(opts), out, gate=gate, **gated)
        tried.append(att.record)
        if att.passed:
            keep = att
            break
        if last_failed is not None:
            shutil.rmtree(last_failed.tmp, ignore_errors=True)
        last_failed = att
    chosen = keep or last_failed
    if chosen is None:
        reasons = "; ".join(f"{r['recipe']}: {r.get('reason')}" for r in tried)
        raise EdgedermError(f"target {t.name}: no recipe could be built here ({reasons})")
    if keep is not None and last_failed is not None:
        shutil.rmtree(last_failed.tmp, ignore_errors=True)
    try:
        _finalize_card(chosen, tried if recipe == "auto" else None)
        final = out / t.name if chosen.passed else out / REJECTED / t.name
        _swap_into_place(chosen.tmp, final)
    except BaseException:
        shutil.rmtree(chosen.tmp, ignore_errors=True)
        raise
    path = final / chosen.path.name
    g = chosen.gate
    status = ("pass" if g.passed else "fail") if g is not None else "built"
    res: dict[str, Any] = {
        "target": t.name,
        "status": status,
        "verdict": {"pass": "pass", "fail": "FAIL", "built": "built (not gated)"}[status],
        "path": str(path),
        "format": chosen.target.format,
        "precision": chosen.card.artifact.get("precision"),
        "compute_ops": chosen.card.artifact.get("compute_ops"),
        "quantized_ops": chosen.card.artifact.get("quantized_ops"),
        "recipe": chosen.recipe,
        "size_bytes": chosen.card.artifact.get("size_bytes"),
        "sha256": chosen.card.artifact.get("sha256"),
        "gate": g.summary() if g is not None else None,
    }
    if recipe == "auto":
        res["recipes_tried"] = tried
    if g is not None and not g.passed:
        res["reasons"] = list(g.reasons)
        res["reason"] = "; ".join(g.reasons)
    return res


def _attempt(
    ctx: ExportContext, dest: Target, t: Target, recipe: str, opts: dict[str, Any], out: Path, *, gate: bool,
    ref: Predictions | None, val_index: Any, tolerances: Tolerances, n_boot: int, seed: int, tta: Any,
    threads: int | None, pool: tuple[list[Path], PoolPredictions] | None,
) -> _Attempt:
    tmp = out / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        path = tmp / f"model{t.suffix}"
        log.info("building %s (recipe %s) ...", t.name, recipe)
        info = dict(t.build(ctx, path, **opts) or {})
        if not path.exists():
            raise EdgedermError(f"target {t.name} wrote no {path.name}")
        measured = _measure(path, t, info)
        precision = str(measured.get("precision") or info.get("precision") or t.precision)
        info.pop("precision", None)
        card = ctx.export_card(target=dest.name, fmt=t.format, precision=precision, info=info, recipe=recipe, options=opts)
        card.artifact.update({k: v for k, v in measured.items() if k != "precision"})
        _write_card(path, card, t.format)
        att = _Attempt(target=t, recipe=recipe, options=opts, tmp=tmp, path=path, card=card, info=info)
        att.record = {"recipe": recipe, "target": t.name, "precision": precision, "options": opts,
                      "size_bytes": _size(path),
                      **{k: measured[k] for k in ("compute_ops", "quantized_ops") if k in measured}}
        if gate:
            assert ref is not None and val_index is not None
            # Judged under the decision rule its card ships with (the reference's thresholds).
            res = _gate_artifact(path, t.format, f"{dest.name} [{recipe}]", ref=ref, val_index=val_index,
                                 tolerances=tolerances, n_boot=n_boot, seed=seed, tta=tta, threads=threads, pool=pool)
            if precision == "fp16":
                _fp16_rule(ctx, val_index, res)
            att.gate = res
            card.metrics["gate"] = res.summary()
            if res.artifact_metrics is not None:
                card.metrics["val"] = {"n": res.n, **res.artifact_metrics}
            res.write(tmp, title=f"{dest.name} ({recipe})")
            att.record.update(status="pass" if res.passed else "fail", reasons=list(res.reasons), gate=res.summary())
        else:
            att.record.update(status="built")
        return att
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _measure(path: Path, t: Target, info: Mapping[str, Any]) -> dict[str, Any]:
    """The precision record counted from the built file (``formats.precision.measure``); for a
    format without an op counter (TensorRT), the exporter's word, marked ``precision_measured: false``."""
    from ..formats.precision import measure

    try:
        measured = measure(path, info)
    except Exception as e:  # a counter that cannot read this file must not lose the build; the card says so
        log.warning("%s: precision not measured (%s: %s); recording the exporter's %s", t.name, type(e).__name__,
                    str(e).strip().splitlines()[0] if str(e).strip() else "", info.get("precision") or t.precision)
        measured = None
    if measured is None:
        return {"precision": info.get("precision") or t.precision, "precision_measured": False}
    measured["precision_measured"] = True
    if t.precision in ("int8", "mixed") and not measured["quantized_ops"]:
        log.warning("%s: none of the %d compute ops in the file runs quantized; this is not an INT8 artifact and is "
                    "recorded as %s", t.name, measured["compute_ops"], measured["precision"])
    elif measured["precision"] != t.precision:
        log.info("%s: the file holds %s (%d of %d compute ops quantized), recorded as such", t.name,
                 measured["precision"], measured["quantized_ops"], measured["compute_ops"])
    return measured


def _gate_artifact(path: Path, fmt: str, name: str, *, ref: Predictions, val_index: Any, tolerances: Tolerances,
                   n_boot: int, seed: int, tta: Any, threads: int | None,
                   pool: tuple[list[Path], PoolPredictions] | None) -> GateResult:
    model = _load(path, fmt, threads)
    log.info("gate: scoring %s on %d validation images", name, len(val_index))
    pred = predict(model, val_index, tta=tta, name=name)
    fidelity = None
    if pool is not None:
        fidelity = (predict_pool(model, pool[0], tta=tta, name=name), pool[1])
    return compare(pred, ref, tolerances=tolerances, n_boot=n_boot, seed=seed, split="val", fidelity=fidelity)


def _fp16_rule(ctx: ExportContext, val_index: Any, res: GateResult) -> None:
    """FP16 artifacts also fail if the network overflows FP16: runtimes that compute FP16 graphs
    in FP32 (ONNX Runtime and OpenVINO on CPUs, XNNPACK) hide it, FP16 GPUs and NPUs do not.
    Checked once per export with every tensor stored in FP16 (``fp16_storage_graph``)."""
    from .registry import _module_available

    scan = getattr(ctx, "_fp16_scan", None)
    if scan is None:
        if not (_module_available("onnx") and _module_available("onnxruntime")):
            log.info("FP16 overflow check skipped: needs the onnx extra (pip install 'edgederm[onnx]')")
            return
        from ..formats.onnx.export import fp16_nonfinite, fp16_storage_graph

        graph = ctx.cache_dir / f"fp16-storage-{ctx.checkpoint_sha256[:16]}.onnx"
        if not graph.exists():
            fp16_storage_graph(ctx.onnx_fp32(), graph)
        recs = val_index.records
        scan = fp16_nonfinite(graph, (ctx.preprocess_records(recs[i : i + 16]) for i in range(0, len(recs), 16)))
        ctx._fp16_scan = scan  # type: ignore[attr-defined]
    bad, total = scan
    res.comparison["fp16_storage_nonfinite"] = bad
    if bad:
        res.reasons.append(
            f"overflows FP16: non-finite outputs on {bad} of {total} validation images when tensors are stored in FP16 "
            f"(hidden here by FP32 compute; FP16 GPUs/NPUs will produce NaN/Inf)"
        )
        res.passed = False


def _precheck(
    ctx: ExportContext, t: Target, out: Path, *, ref: Predictions | None, val_index: Any, tolerances: Tolerances,
    n_boot: int, seed: int, tta: Any, threads: int | None, pool: tuple[list[Path], PoolPredictions] | None,
) -> dict[str, Any]:
    """Build the CPU stand-in of ``t`` (an ONNX Runtime graph), gate it, keep only the reports."""
    assert ref is not None and val_index is not None
    tmp = out / f".{t.name}-precheck.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        path = tmp / "precheck.onnx"
        info = PRECHECKS[t.name](ctx, path)
        card = ctx.export_card(target=f"{t.name}-precheck", fmt="onnx", precision=t.precision, info=info, recipe="precheck")
        _write_card(path, card, "onnx")
        res = _gate_artifact(path, "onnx", f"{t.name} precheck (ONNX Runtime {t.precision})", ref=ref, val_index=val_index,
                             tolerances=tolerances, n_boot=n_boot, seed=seed, tta=tta, threads=threads, pool=pool)
        reports = out / f"{t.name}-precheck"
        reports.mkdir(parents=True, exist_ok=True)
        res.write(reports, title=f"{t.name} precheck: FP16 graph in ONNX Runtime on CPU")
        write_json_atomic(reports / "precheck.json", {"target": t.name, "stand_in": info, "gate": res.summary()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    status = "precheck-pass" if res.passed else "precheck-fail"
    out_d: dict[str, Any] = {
        "target": t.name, "status": status, "verdict": f"precheck {res.verdict}", "gate": res.summary(),
        "reports": str(reports), "nonfinite": res.comparison.get("nonfinite"),
        "max_prob_diff": res.comparison.get("max_prob_diff"), "argmax_agreement": res.comparison.get("argmax_agreement"),
    }
    if not res.passed:
        out_d["reason"] = "; ".join(res.reasons)
    return out_d


# -- cards and files ------------------------------------------------------------------------------
def _load(path: Path, fmt: str, threads: int | None) -> Any:
    from ..runtime import load

    return load(path, backend=fmt, threads=threads) if threads else load(path, backend=fmt)


def _write_card(path: Path, card: ArtifactCard, fmt: str) -> None:
    """Embed the card where the format can hold it, and write the sidecar."""
    from ..card import embed_card
    from ..formats.table import get_format

    if get_format(fmt).metadata is not None:
        embed_card(path, card)
    card.write_sidecar(path)


def _size(path: Path) -> int:
    """Bytes of the artifact, with its companion files (OpenVINO's .bin)."""
    return sum(p.stat().st_size for p in path.parent.iterdir()
               if p.is_file() and p.name.startswith(path.stem + ".") and not p.name.endswith(".card.json"))


def _finalize_card(att: _Attempt, tried: list[dict[str, Any]] | None) -> None:
    card = att.card
    if tried is not None:
        card.metrics["recipes_tried"] = tried
    card.artifact["recipe"] = att.recipe
    # The embedded card cannot hold the hash of the file it is in: embed, then hash, then sidecar.
    _write_card(att.path, card, att.target.format)
    card.describe_artifact(att.path, fmt=att.target.format, precision=str(card.artifact.get("precision")))
    files = {p.name: sha256_file(p) for p in sorted(att.path.parent.iterdir())
             if p.is_file() and p.name.startswith(att.path.stem + ".") and not p.name.endswith(".card.json")}
    card.artifact["size_bytes"] = _size(att.path)
    if len(files) > 1:
        card.artifact["files"] = files
    card.write_sidecar(att.path)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``tmp`` with renames (never a half-written folder)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(out: Path) -> None:
    """Clean up after a hard-killed export: drop its temporary folders, and put back a passing
    artifact folder it had moved aside but not yet replaced."""
    for base in (out, out / REJECTED):
        if not base.is_dir():
            continue
        for p in base.iterdir():
            m = _TMP_RE.match(p.name)
            if not m or not p.is_dir() or _pid_alive(int(m["pid"])):
                continue
            final = base / m["name"]
            if m["kind"] == "old" and not final.exists():
                log.warning("restoring %s (an interrupted export had moved it aside)", final)
                os.replace(p, final)
            else:
                shutil.rmtree(p, ignore_errors=True)


def _short(reason: str) -> str:
    """'missing here: X, Y' of an availability message, without install hints."""
    m = re.search(r"missing here: (.*?)(?:\. |$)", reason)
    text = f"missing {m.group(1)}" if m else reason
    return re.sub(r" \((?:pip install|none found)[^)]*\)", "", text)


def _merge_previous(out: Path, results: list[dict[str, Any]], sha: str) -> list[dict[str, Any]]:
    """This run's results plus earlier ones for targets not re-exported now whose artifact is
    still in place, so RUN/export/gate.md describes every artifact in the folder."""
    import json

    prev_file = out / "summary.json"
    now = {r["target"] for r in results}
    merged = list(results)
    if prev_file.exists():
        try:
            doc = json.loads(prev_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        # Artifacts of another checkpoint (the run was retrained) are not listed as current.
        prev = doc.get("results", []) if doc.get("checkpoint_sha256") == sha else []
        for r in prev:
            if r.get("target") not in now and r.get("status") == "pass" and r.get("path") and Path(r["path"]).exists():
                merged.append(r)
    from .registry import TARGETS

    order = {n: i for i, n in enumerate(TARGETS)}
    return sorted(merged, key=lambda r: order.get(r["target"], len(order)))


def _rule(thresholds: Mapping[str, Any] | None) -> str:
    if not thresholds:
        return "argmax"
    return "thresholds " + ", ".join(f"{k} ≥ {float(v):.4f}" for k, v in thresholds.items())


def _write_summary(ctx: ExportContext, out: Path, results: list[dict[str, Any]], ref_metrics: dict[str, Any] | None) -> None:
    rows: list[dict[str, Any]] = []
    results = _merge_previous(out, results, ctx.checkpoint_sha256)
    first = next((r for r in results if r.get("gate")), None)
    if ref_metrics is not None:
        rows.append({"target": f"reference: {ctx.checkpoint.name} (FP32)", "precision": "fp32",
                     "size_bytes": ctx.checkpoint.stat().st_size,
                     "metrics": ref_metrics, "verdict": "—"})
    for r in results:
        row = dict(r)
        if r["status"] == "skipped":
            row["verdict"] = "skipped: " + _short(str(r.get("reason", "")))
            if r.get("precheck"):
                row["gate"] = r["precheck"].get("gate")
                row["verdict"] += f" — CPU FP16 precheck: {r['precheck']['status'].split('-')[1]}"
        elif r["status"] in ("fail", "error", "precheck-fail"):
            row["verdict"] = f"{r['verdict']}: {r.get('reason', '')}"
        rows.append(row)
    text = ["# Export gate", ""]
    if first is not None:
        g = first["gate"]
        t = g["tolerances"]
        text.append(f"Validation split, n = {g['n']} images; each artifact judged under the decision rule its card ships "
                    f"({_rule(g.get('thresholds'))}). Rules: no class loses more of the reference's correct calls than "
                    f"max({t['class_flips']}, {t['class_pp']:g}% of the class) — melanoma max({t['mel_flips']}, "
                    f"{t['mel_sens_pp']:g}%) —; no BACC drop over {t['bacc_pp']:g} pp whose paired CI excludes 0"
                    + (f"; fidelity pool: agreement ≥ {t['fidelity_agreement']:g}, melanoma calls kept ≥ {t['fidelity_mel_kept']:g}"
                       if g.get("fidelity") else "") + ". Per-target details: `<target>/gate.md`; the rule: docs/gate.md.")
        text.append("")
    text.append(summary_table(rows))
    write_text_atomic(out / "gate.md", "\n".join(text) + "\n")
    write_json_atomic(out / "summary.json", {"checkpoint": str(ctx.checkpoint), "checkpoint_sha256": ctx.checkpoint_sha256, "results": results})

