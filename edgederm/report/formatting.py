"""Markdown builders of the run report: metrics and per-class tables, the clinical thresholds
section, seeds, ensemble members, Grad-CAM-in-mask. Reusable for export / gate / bench reports.

Every estimate with a CI is printed by ``edgederm.metrics.format_ci`` (one style everywhere).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..metrics import ECE_BINS, format_ci, format_ci_entry
from ..metrics import format_number as _num
from .plots import best_epoch
from .reading import _member_history

__all__ = ["SPLITS", "metrics_table", "per_class_table", "thresholds_section"]

SPLITS = ("val", "test")
# Metric keys of a summary in report order, with the names a reader expects. Keys not listed
# here but present as scalars are appended under their own name.
_METRIC_LABELS: dict[str, str] = {
    "bacc": "BACC",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "macro_auc": "macro AUC",
    "top2": "top-2 accuracy",
    "top3": "top-3 accuracy",
    "mel_sensitivity": "melanoma sensitivity",
    "mel_specificity": "melanoma specificity",
    "malignant_bacc": "malignant BACC",
    "malignant_sensitivity": "malignant sensitivity (triage)",
    "malignant_specificity": "malignant specificity (triage)",
    "ece": f"ECE ({ECE_BINS} bins)",
}
# Non-metric keys of classification_report (counts, per-class dicts are handled separately).
_NOT_SCALAR_METRICS = {"n", "classes", "top1_ties", "confusion_matrix"}


def _ci_cell(entry: Any, digits: int = 3) -> str:
    """``0.912 [0.871–0.950]`` from a bootstrap entry, or the bare value."""
    return format_ci_entry(entry, digits=digits)


def _value(entry: Any) -> float | None:
    if isinstance(entry, Mapping):
        entry = entry.get("value")
    if entry is None or isinstance(entry, bool):
        return None
    try:
        f = float(entry)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _entry(summary: Mapping[str, Any], key: str) -> Any:
    """The CI entry of ``key`` if bootstrapped, else the point value, else None."""
    ci = summary.get("ci") or {}
    if key in ci:
        return ci[key]
    return (summary.get("metrics") or {}).get(key)


def _ci_level(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    levels = {float(e["level"]) for s in summaries.values() for e in (s.get("ci") or {}).values()
              if isinstance(e, Mapping) and "level" in e}
    level = levels.pop() if len(levels) == 1 else 0.95
    return f"{100 * level:g}%"


def metrics_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Side-by-side Markdown table of scalar metrics with CIs, one column per evaluation.

    ``summaries`` maps a column name (``val``, ``test``, ``int8 on test``…) to an
    ``EvalResult.summary()``-shaped dict. Metrics follow a clinical order; those a column lacks
    show ``—``. (``edgederm.metrics.format_metrics_table`` formats one evaluation per table; a
    report compares several, hence this.)
    """
    keys: list[str] = []
    for s in summaries.values():
        for k, v in {**(s.get("metrics") or {}), **(s.get("ci") or {})}.items():
            scalar = isinstance(v, Mapping) and "value" in v or v is None or (
                isinstance(v, (int, float)) and not isinstance(v, bool))
            if scalar and "/" not in k and k not in _NOT_SCALAR_METRICS and k not in keys:
                keys.append(k)
    ordered = [k for k in _METRIC_LABELS if k in keys] + [k for k in keys if k not in _METRIC_LABELS]
    cols = list(summaries)
    level = _ci_level(summaries)
    head = [f"{c} (n={summaries[c].get('n', '?')})" for c in cols]
    lines = [f"| metric ({level} CI) | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    for k in ordered:
        cells = []
        for c in cols:
            s = summaries[c]
            present = k in (s.get("ci") or {}) or k in (s.get("metrics") or {})
            cells.append(_ci_cell(_entry(s, k)) if present else "—")
        lines.append(f"| {_METRIC_LABELS.get(k, k)} | " + " | ".join(cells) + " |")
    extra = []
    for label, key in (("skipped images", "skipped"),):
        if any(key in s for s in summaries.values()):
            extra.append(f"| {label} | " + " | ".join(str(summaries[c].get(key, "—")) for c in cols) + " |")
    ties = [(s.get("metrics") or {}).get("top1_ties") for s in summaries.values()]
    if any(t for t in ties):
        cells = " | ".join("—" if t is None else str(t) for t in ties)
        extra.append(f"| top-1 ties (argmax ambiguous) | {cells} |")
    return "\n".join(lines + extra)


def per_class_table(summary: Mapping[str, Any], classes: Sequence[str] | None = None) -> str:
    """Per-class Markdown table: support, sensitivity, specificity (with CIs when bootstrapped),
    precision, F1, AUC (with CI)."""
    m = summary.get("metrics") or {}
    ci = summary.get("ci") or {}
    names = list(classes or m.get("classes") or m.get("support", {}).keys())

    def cell(metric: str, c: str) -> str:
        key = f"{metric}/{c}"
        if key in ci:
            return _ci_cell(ci[key])
        return _num((m.get(metric) or {}).get(c))

    lines = ["| class | support | sensitivity | specificity | precision | F1 | AUC |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in names:
        support = (m.get("support") or {}).get(c)
        lines.append(
            f"| {c} | {'n/a' if support is None else support} | {cell('sensitivity', c)} | "
            f"{cell('specificity', c)} | {_num((m.get('precision') or {}).get(c))} | "
            f"{_num((m.get('f1') or {}).get(c))} | {cell('auc', c)} |"
        )
    return "\n".join(lines)


def _target_floors(decision: Mapping[str, Any], clinical_entry: Mapping[str, Any] | None,
                   cls: str) -> tuple[float | None, float | None]:
    """(min sensitivity, min specificity) of ``cls``: from ``clinical_report``'s entry, else the
    card's ``decision["targets"]`` (``{cls: {"min_sens", "min_spec"}}`` or a bare min_sens)."""
    for src in (clinical_entry, (decision.get("targets") or {}).get(cls)):
        if isinstance(src, Mapping) and ("min_sens" in src or "min_spec" in src):
            return _value(src.get("min_sens")), _value(src.get("min_spec"))
        if src is not None and not isinstance(src, Mapping):
            return _value(src), None
    return None, None


def _meets(sens: Any, spec: Any, t_sens: float | None, t_spec: float | None, key: str) -> bool | None:
    """Whether ``key`` (``"value"`` or ``"lo"``) of both entries reaches the floors."""
    if t_sens is None and t_spec is None:
        return None
    out = True
    for entry, floor in ((sens, t_sens), (spec, t_spec)):
        if floor is None:
            continue
        v = entry.get(key) if isinstance(entry, Mapping) else (entry if key == "value" else None)
        v = _value(v)
        if v is None:
            return None
        out = out and v >= floor - 1e-9
    return out


def _verdict(met: bool | None, met_lo: bool | None, has_target: bool) -> str:
    if not has_target:
        return "—"
    if met is None:
        return "n/a"
    if not met:
        return "**not met**"
    return "met (not at CI lower bound)" if met_lo is False else "met"


def _clinical_row(decision: Mapping[str, Any], summary: Mapping[str, Any] | None,
                  clinical: Mapping[str, Any] | None, cls: str) -> dict[str, Any]:
    """One class on one split: sens / spec entries, floors, verdicts — from ``clinical_report``
    output when there is one, else from the split's bootstrap of the rule's decisions."""
    t = ((clinical or {}).get("targets") or {}).get(cls)
    if isinstance(t, Mapping):
        sens, spec = t.get("sens"), t.get("spec")
        t_sens, t_spec = _target_floors(decision, t, cls)
        met, met_lo = t.get("met"), t.get("met_at_lower_bound")
        argmax = (t.get("sens_argmax"), t.get("spec_argmax"))
    else:
        s = summary or {}
        sens, spec = _entry(s, f"sensitivity/{cls}"), _entry(s, f"specificity/{cls}")
        if sens is None:
            sens = ((s.get("metrics") or {}).get("sensitivity") or {}).get(cls)
            spec = ((s.get("metrics") or {}).get("specificity") or {}).get(cls)
        t_sens, t_spec = _target_floors(decision, None, cls)
        met, met_lo = _meets(sens, spec, t_sens, t_spec, "value"), _meets(sens, spec, t_sens, t_spec, "lo")
        argmax = (None, None)
    has_target = t_sens is not None or t_spec is not None
    return {"sens": sens, "spec": spec, "floors": (t_sens, t_spec),
            "verdict": _verdict(met, met_lo, has_target), "argmax": argmax,
            "fallback": t.get("fallback") if isinstance(t, Mapping) else None}


def thresholds_section(
    decision: Mapping[str, Any],
    summaries: Mapping[str, Mapping[str, Any]],
    clinical: Mapping[str, Mapping[str, Any]] | None = None,
) -> str | None:
    """The clinical decision thresholds section, or None for a plain argmax model.

    Shown when the decision has thresholds or records a calibration (``targets`` /
    ``fallback``, as ``edgederm.thresholds.calibrate`` writes them: a calibration whose every
    class fell back to argmax is reported too) or when ``clinical`` (per split, the output of
    ``edgederm.thresholds.clinical_report``) is given. Per target class: priority, threshold,
    fallback level, floors, and per split the sensitivity / specificity of the multi-class rule
    with CIs and whether the floors were met — from ``clinical`` when given, else from the
    summaries' bootstrap (computed on the rule's decisions, so the same quantity).
    """
    thresholds = dict(decision.get("thresholds") or {})
    fallback = decision.get("fallback")
    fallback_map = dict(fallback) if isinstance(fallback, Mapping) else {}
    calibrated = bool(decision.get("targets")) or fallback is not None or "fallback_fired" in decision
    if not thresholds and not calibrated and not clinical:
        return None
    priority = [c for c in (decision.get("priority") or list(thresholds)) if c in thresholds]
    priority += [c for c in thresholds if c not in priority]
    order = list(priority)
    for src in [decision.get("targets") or {}, fallback_map] + [
        (c or {}).get("targets") or {} for c in (clinical or {}).values()
    ]:
        order += [c for c in src if c not in order]
    cols = list(summaries)
    level = _ci_level(summaries)

    if thresholds:
        rule = (f"Rule: `{decision.get('rule', 'priority_thresholds')}`, priority {' → '.join(priority)}: "
                "the first class in that order whose probability reaches its threshold is the "
                "decision, otherwise argmax.")
    else:
        rule = f"Rule: `{decision.get('rule', 'argmax')}` — no class kept a threshold."
    out = [
        f"{rule} Sensitivity / specificity are of the decision under this rule, multi-class "
        f"(a melanoma called BCC is a melanoma miss), with {level} CIs over lesions.",
        "",
    ]
    cal = decision.get("calibrated_on")
    if isinstance(cal, Mapping):
        extra = [f"{k}: {v}" for k, v in cal.items()
                 if k not in ("split", "n", "achieved", "bacc", "bacc_argmax") and not isinstance(v, (Mapping, list))]
        crit = f"; criterion `{decision['criterion']}`" if decision.get("criterion") else ""
        out += [f"Thresholds calibrated on {cal.get('split', 'validation')} (n={cal.get('n', '?')}"
                + (f"; {'; '.join(extra)}" if extra else "") + f"){crit}; test never seen by the calibration.", ""]
    fired = decision.get("fallback_fired", None if fallback_map else fallback)
    if "fallback_fired" in decision or fallback is not None:
        if fired in (None, False, "", "none", "strict"):
            out += ["Fallback: none fired — every target class met its strict floors on validation.", ""]
        elif fired == "argmax":
            out += ["Fallback fired: **argmax** — for at least one class no threshold met even the "
                    "relaxed floors; that class is decided by argmax.", ""]
        else:
            out += [f"Fallback fired: **{fired}** — at least one class uses relaxed floors "
                    "(level per class below).", ""]
    if decision.get("skipped"):
        out += [f"Targets skipped (not classes of this model): {', '.join(map(str, decision['skipped']))}.", ""]

    head = ["class", "priority", "threshold", "level", "target"]
    align = ["---", "---:", "---:", ":---:", ":---:"]
    for c in cols:
        head += [f"{c} sensitivity", f"{c} specificity", f"{c}: floors met"]
        align += ["---:", "---:", ":---:"]
    # What the thresholds change: the same class's numbers under plain argmax (clinical_report).
    show_argmax = "test" in cols and bool(((clinical or {}).get("test") or {}).get("targets"))
    if show_argmax:
        head.append("test sens / spec with argmax")
        align.append("---:")
    out += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for cls in order:
        rows = {c: _clinical_row(decision, summaries.get(c), (clinical or {}).get(c), cls) for c in cols}
        first = next(iter(rows.values()), None)
        t_sens, t_spec = first["floors"] if first else (None, None)
        target = ", ".join(x for x in (
            f"sens ≥ {t_sens:.2f}" if t_sens is not None else "",
            f"spec ≥ {t_spec:.2f}" if t_spec is not None else "") if x) or "—"
        lvl = fallback_map.get(cls) or next((r["fallback"] for r in rows.values() if r["fallback"]), None)
        # A relaxed level: show the floors it settled for (recorded by the calibration).
        used = ((cal.get("achieved") or {}).get(cls) or {}) if isinstance(cal, Mapping) else {}
        if lvl not in (None, "strict", "argmax") and used.get("min_sens") is not None:
            lvl = f"{lvl} (sens ≥ {_num(used['min_sens'], 2)}, spec ≥ {_num(used.get('min_spec'), 2)})"
        row = [cls, str(priority.index(cls) + 1) if cls in priority else "—",
               _num(thresholds[cls], 4) if cls in thresholds else "— (argmax)", str(lvl or "—"), target]
        for c in cols:
            r = rows[c]
            row += [_ci_cell(r["sens"]), _ci_cell(r["spec"]), r["verdict"]]
        if show_argmax:
            a_sens, a_spec = rows["test"]["argmax"]
            row.append(f"{_num(a_sens)} / {_num(a_spec)}")
        out.append("| " + " | ".join(row) + " |")

    baccs = []
    for c in cols:
        b = ((clinical or {}).get(c) or {}).get("bacc")
        if isinstance(b, Mapping) and "rule" in b and "argmax" in b:
            diff = format_ci_entry(b.get("diff") or {}, key="diff", signed=True)
            baccs.append(f"{c}: {_ci_cell(b['rule'])} with the rule vs {_ci_cell(b['argmax'])} with argmax, "
                         f"difference {diff}")
    if baccs:
        out += ["", "BACC — " + "; ".join(baccs) + "."]
    return "\n".join(out)


def _seed_scalars(entry: Mapping[str, Any], split: str) -> dict[str, float]:
    """Scalar metrics of one seed's entry for ``split``. Accepted: ``{"seed", "val": X, "test":
    X}`` where X is a summary (``{"metrics", "ci"}``) or a flat ``{metric: value}`` dict (the
    trainer's ``seeds.json`` runs), or a bare summary / flat dict (counted as test)."""
    if isinstance(entry.get(split), Mapping):
        s = entry[split]
    elif split == "test" and not any(isinstance(entry.get(k), Mapping) for k in SPLITS):
        s = entry
    else:
        return {}
    if "metrics" in s or "ci" in s:
        m = dict(s.get("metrics") or {})
        for k, v in (s.get("ci") or {}).items():
            m.setdefault(k, v)
    else:
        m = dict(s)
    out = {}
    for k, v in m.items():
        if k in _NOT_SCALAR_METRICS or k in ("seed", "run") or "/" in k:
            continue
        val = _value(v)
        if val is not None:
            out[k] = val
    return out


def _seeds_section(seeds: Sequence[Mapping[str, Any]]) -> str | None:
    seeds = [s for s in seeds if isinstance(s, Mapping)]
    if not seeds:
        return None
    per_split = {sp: [_seed_scalars(s, sp) for s in seeds] for sp in SPLITS}
    keys = []
    for sp in SPLITS:
        for d in per_split[sp]:
            keys += [k for k in d if k not in keys]
    keys = [k for k in _METRIC_LABELS if k in keys] + [k for k in keys if k not in _METRIC_LABELS]
    labels = [str(s.get("seed", i)) for i, s in enumerate(seeds)]
    splits = [sp for sp in SPLITS if any(per_split[sp])]
    lines = [f"{len(seeds)} seeds ({', '.join(labels)}); mean ± sample SD over seeds.", ""]
    head = ["metric"] + [f"{sp} mean ± SD" for sp in splits] + [f"test, seed {x}" for x in labels if "test" in splits]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for k in keys:
        row = [_METRIC_LABELS.get(k, k)]
        for sp in splits:
            vals = [d[k] for d in per_split[sp] if k in d]
            if not vals:
                row.append("—")
            elif len(vals) == 1:
                row.append(f"{vals[0]:.3f} (1 seed)")
            else:
                row.append(f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}")
        if "test" in splits:
            row += [_num(d.get(k)) for d in per_split["test"]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _members_table(card: Mapping[str, Any], history: Mapping[str, list]) -> str | None:
    model = card.get("model") or {}
    members = model.get("members") or []
    if not members:
        return None
    default_size = (card.get("preprocessing") or {}).get("input_size")
    # Columns the trainer fills only in some runs (k-fold, pretrained init, focal loss).
    optional = [(k, label) for k, label in (("fold", "fold"), ("init", "init"), ("loss", "loss"))
                if any(k in m for m in members)]
    head = ["#", "model"] + [label for _, label in optional] + [
        "input", "val BACC", "weight", "best epoch", "epochs", "train time"]
    lines = ["| " + " | ".join(head) + " |",
             "|---:|---|" + "---|" * len(optional) + "---:|" * 6]
    for i, m in enumerate(members):
        entries = _member_history(history, i, members) or m.get("history") or []
        best = m.get("best_epoch")
        if best is None and entries:
            b = best_epoch(entries)
            best = b[0] if b else None
        secs = [float(e["seconds"]) for e in entries if isinstance(e.get("seconds"), (int, float))]
        cells = [str(i), f"`{m.get('name', '?')}`"] + [str(m.get(k, "—")) for k, _ in optional] + [
            _member_size(m, default_size) or "n/a", _num(m.get("val_bacc")), _num(m.get("weight")),
            str(best) if best is not None else "n/a", str(len(entries)) if entries else "n/a",
            _duration(sum(secs)) if secs else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    kind = model.get("kind", "single")
    note = kind + (f", combined by `{model['combine']}`" if kind == "ensemble" and model.get("combine") else "")
    return note + ".\n\n" + "\n".join(lines)


def _member_size(member: Mapping[str, Any], default: Any) -> str | None:
    size = member.get("input_size") or (member.get("preprocessing") or {}).get("input_size") or default
    return "×".join(str(x) for x in size) if size else None


def _duration(seconds: Any) -> str:
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _flat_rows(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            rows += _flat_rows(v, f"{prefix}{k}" if not prefix else f"{prefix}/{k}")
    elif isinstance(obj, list):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj) and obj:
            arr = np.asarray(obj, dtype=float)
            rows.append((prefix, f"mean {arr.mean():.3f} over {len(arr)}"))
        else:
            rows.append((prefix, f"{len(obj)} entries"))
    elif isinstance(obj, float):
        rows.append((prefix, _num(obj)))
    else:
        rows.append((prefix, str(obj)))
    return rows


def _cam_table(cam: Any) -> str:
    """``cam_in_mask.json`` (``edgederm.explain.cam_in_mask_report``): per member, the share of
    Grad-CAM energy inside the lesion mask against chance (the mask's area share)."""
    members = cam.get("members") if isinstance(cam, Mapping) else None
    if not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
        return "| | |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in _flat_rows(cam))

    def stat(e: Any) -> str:
        if not isinstance(e, Mapping):
            return _num(e)
        return format_ci(e.get("mean"), e.get("lo"), e.get("hi"))

    level = cam.get("level") if isinstance(cam.get("level"), (int, float)) else 0.95
    head = (f"Grad-CAM energy inside the lesion mask on {cam.get('dataset', 'the masked images')} "
            f"({cam.get('n_images', '?')} images; explained class: {cam.get('explained', 'decision')}); "
            f"chance = the mask's share of the image. Means with {100 * float(level):g}% bootstrap CIs over images.")
    lines = [head, "", "| member | energy in mask | chance | excess over chance | ratio to chance |",
             "|---|---:|---:|---:|---:|"]
    for m in members:
        lines.append(f"| `{m.get('name', '?')}` | {stat(m.get('energy_in_mask'))} | "
                     f"{stat(m.get('mask_area_fraction'))} | {stat(m.get('excess_over_chance'))} | "
                     f"{_num(m.get('ratio_to_chance'), 2)} |")
    return "\n".join(lines)
