"""Reading a training run folder: saved predictions, the card, the training history, split.csv.

Every reader raises a one-line ``EdgedermError`` on a file that is present but unreadable.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..decision import decide
from ..errors import ClassMismatchError, DataError, EdgedermError
from .plots import _labels, _probs

log = logging.getLogger(__name__)

__all__ = ["Predictions", "load_predictions"]


@dataclass
class Predictions:
    """One split's saved predictions (``predictions/<split>.npz``)."""

    y_true: np.ndarray
    probs: np.ndarray
    y_pred: np.ndarray
    classes: list[str]
    image_ids: np.ndarray | None = None
    groups: np.ndarray | None = None


def load_predictions(path: str | Path, classes: Sequence[str] | None = None,
                     decision: Mapping[str, Any] | None = None) -> Predictions:
    """Read a predictions ``.npz``; its class list must equal ``classes`` when given.

    ``y_pred`` defaults to the card's ``decision`` rule (else argmax) when the file lacks it.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as a predictions .npz ({str(e).splitlines()[0][:160]})") from None
    for key in ("y_true", "probs"):
        if key not in data:
            raise DataError(f"{path}: missing array {key!r} (has: {', '.join(sorted(data)) or 'none'})")
    names = [str(c) for c in data["classes"]] if "classes" in data else None
    if names is None:
        if classes is None:
            raise DataError(f"{path}: no 'classes' array and no class list given")
        names = [str(c) for c in classes]
    elif classes is not None and names != [str(c) for c in classes]:
        raise ClassMismatchError(f"{path}: classes {names} differ from the card's {list(classes)}")
    C = len(names)
    probs = _probs(data["probs"], C)
    y_true = _labels(data["y_true"], f"{path.name} y_true", C, probs.shape[0])
    if "y_pred" in data:
        y_pred = _labels(data["y_pred"], f"{path.name} y_pred", C, len(y_true))
    else:
        y_pred = decide(probs, names, dict(decision or {"rule": "argmax"}))
    n = len(y_true)
    ids, groups = data.get("image_ids"), data.get("groups")
    for key, arr in (("image_ids", ids), ("groups", groups)):
        if arr is not None and len(arr) != n:
            raise DataError(f"{path}: {key} has {len(arr)} entries but there are {n} images")
    return Predictions(y_true, probs, y_pred, names, ids, groups)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EdgedermError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgedermError(f"{path}: cannot read {what} ({e})") from None


def _read_card(run_dir: Path) -> dict[str, Any]:
    from ..card import ArtifactCard, load_card

    side = run_dir / "model.pt.card.json"
    if side.exists():
        card = ArtifactCard.from_json(side.read_text(encoding="utf-8"), source=str(side))
    elif (run_dir / "model.pt").exists():
        card = load_card(run_dir / "model.pt")
    else:
        raise EdgedermError(
            f"{run_dir}: no model.pt.card.json (not a finished training run?)"
        )
    return card.to_dict()


def _read_history(run_dir: Path, card: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    path = run_dir / "history.json"
    if path.exists():
        hist = _read_json(path, "the training history")
        if not isinstance(hist, dict) or not all(isinstance(v, list) for v in hist.values()):
            raise EdgedermError(f"{path}: expected {{member: [per-epoch objects]}}")
        return hist
    out = {}
    for i, m in enumerate(card.get("model", {}).get("members", [])):
        if m.get("history"):
            out[f"{i}-{m.get('name', 'member')}"] = m["history"]
    return out


def _member_history(history: Mapping[str, list], index: int, members: Sequence[Mapping[str, Any]]) -> list | None:
    """The history of the ``index``-th card member. The trainer keys it by its member folder,
    ``"<slot>-<model>"`` (``"/fold<k>"`` appended in k-fold runs); ``"<slot>"`` and the bare model
    name (when no other member has it) are accepted too."""
    m = members[index]
    name, slot, fold = str(m.get("name", "?")), m.get("slot", index), m.get("fold")
    key = f"{slot}-{name}" + (f"/fold{fold}" if fold is not None else "")
    for k in (key, str(slot) if fold is None else None):
        if k is not None and k in history:
            return history[k]
    if name in history and [str(x.get("name")) for x in members].count(name) == 1:
        return history[name]
    if len(members) == len(history) == 1:
        return next(iter(history.values()))
    return None


def _split_table(path: Path, classes: Sequence[str]) -> str | None:
    """Images (lesions) per class and split from split.csv."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            first = fh.readline()
            if not first.startswith("#"):
                fh.seek(0)
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        log.warning("report: %s unreadable, class table left out: %s", path, e)
        return None
    if not rows or not {"label", "split"} <= set(rows[0]):
        log.warning("report: %s lacks label/split columns, class table left out", path)
        return None
    images: Counter[tuple[str, str]] = Counter()
    lesions: dict[tuple[str, str], set[str]] = defaultdict(set)
    for i, r in enumerate(rows):
        key = (r["label"], r["split"])
        images[key] += 1
        lesions[key].add(r.get("group") or r.get("image_id") or f"row {i}")
    splits = [s for s in ("train", "val", "test") if any(k[1] == s for k in images)]
    splits += sorted({k[1] for k in images} - set(splits))
    labels = list(classes) + sorted({k[0] for k in images} - set(classes))
    lines = ["| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for c in labels:
        lines.append(f"| {c} | " + " | ".join(f"{images[(c, s)]} ({len(lesions[(c, s)])})" for s in splits) + " |")
    totals = []
    for s in splits:
        n_lesions = len(set().union(*(lesions[(c, s)] for c in labels)))
        totals.append(f"{sum(images[(c, s)] for c in labels)} ({n_lesions})")
    lines.append("| **all** | " + " | ".join(totals) + " |")
    return "\n".join(lines)
