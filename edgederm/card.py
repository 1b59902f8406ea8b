"""The artifact card: one JSON document that travels with every checkpoint and artifact.

It carries what a consumer needs to use a model correctly and what a reviewer needs to trust it:
the class list, the preprocessing spec, the model(s) and ensemble weights, the TTA views, the
decision thresholds (and which calibration fallback fired), metrics with CIs and the data they
were measured on, and provenance. The schema is ``card.schema.json`` (versioned); formats embed
the card where they can (torch checkpoint entry, ONNX ``metadata_props``, OpenVINO ``rt_info``,
TFLite metadata) and a ``<artifact>.card.json`` sidecar is always written next to the file.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import json
import logging
import math
import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import __version__
from .errors import CardError, ClassMismatchError, IntegrityError, MissingExtraError
from .formats.table import EMBED_KEY  # noqa: F401  (re-exported: where the card sits inside a file)
from .fsutil import sha256_file, write_json_atomic
from .provenance import git_sha
from .preprocess import SPEC_VERSION, PreprocessSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".card.json"
# The card fields that determine what a model predicts. An embedded card and its sidecar must agree
# on these; ``artifact``, ``metrics``, ``provenance`` and ``history`` legitimately differ (the
# sidecar is written after the file is hashed, and may gain metrics later).
PREDICTION_FIELDS = ("task", "classes", "preprocessing", "model", "tta", "decision")
DECISION_RULES = ("argmax", "priority_thresholds")


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("edgederm").joinpath("card.schema.json").read_text())


def provenance(command: str | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, host and time: who made this artifact, with what."""
    prov: dict[str, Any] = {
        "edgederm": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        prov["torch"] = torch.__version__
    except ImportError:  # the runtime-only install has no torch
        pass
    if command:
        prov["command"] = command
    prov.update(extra)
    return prov


@dataclass
class ArtifactCard:
    """A typed view of the card document; ``to_dict``/``from_dict`` are the JSON form."""

    name: str
    classes: list[str]
    preprocessing: PreprocessSpec
    model: dict[str, Any]
    decision: dict[str, Any] = field(default_factory=lambda: {"rule": "argmax"})
    task: str = "classification"
    taxonomy: str = ""
    tta: dict[str, Any] = field(default_factory=lambda: {"views": ["identity"]})
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    artifact: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=provenance)
    history: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "edgederm.card",
            "schema_version": self.schema_version,
            "name": self.name,
            "task": self.task,
            "classes": list(self.classes),
            "taxonomy": self.taxonomy,
            "preprocessing": self.preprocessing.to_dict(),
            "model": copy.deepcopy(self.model),
            "tta": copy.deepcopy(self.tta),
            "decision": copy.deepcopy(self.decision),
            "metrics": copy.deepcopy(self.metrics),
            "data": copy.deepcopy(self.data),
            "artifact": copy.deepcopy(self.artifact),
            "provenance": copy.deepcopy(self.provenance),
            "history": copy.deepcopy(self.history),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "card") -> "ArtifactCard":
        validate(d, source=source)
        try:
            spec = PreprocessSpec.from_dict(d["preprocessing"])
        except (TypeError, ValueError) as e:
            raise CardError(f"{source}: bad preprocessing spec: {e}") from None
        return cls(
            name=d["name"],
            classes=list(d["classes"]),
            preprocessing=spec,
            model=d["model"],
            decision=d["decision"],
            task=d.get("task", "classification"),
            taxonomy=d.get("taxonomy", ""),
            tta=d.get("tta", {"views": ["identity"]}),
            metrics=d.get("metrics", {}),
            data=d.get("data", {}),
            artifact=d.get("artifact", {}),
            provenance=d["provenance"],
            history=d.get("history", []),
            schema_version=int(d["schema_version"]),
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "card") -> "ArtifactCard":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CardError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d, source=source)

    def copy(self) -> "ArtifactCard":
        return ArtifactCard.from_dict(self.to_dict())

    # -- checks --------------------------------------------------------------------------------
    def check_classes(self, data_classes: Sequence[str], *, what: str = "the data") -> None:
        """Refuse to run a model on data with a different class list (order matters)."""
        if list(data_classes) != list(self.classes):
            raise ClassMismatchError(
                f"class list mismatch: card {self.name!r} has {list(self.classes)} but "
                f"{what} has {list(data_classes)}"
            )

    # -- files ---------------------------------------------------------------------------------
    def describe_artifact(self, path: str | Path, *, fmt: str, precision: str) -> None:
        """Record the file's format, precision, size and SHA-256 in the card."""
        p = Path(path)
        self.artifact = {
            **self.artifact,
            "format": fmt,
            "precision": precision,
            "file": p.name,
            "size_bytes": p.stat().st_size,
            "sha256": sha256_file(p),
        }

    def write_sidecar(self, artifact_path: str | Path) -> Path:
        side = sidecar_path(artifact_path)
        write_json_atomic(side, self.to_dict())
        return side


def sidecar_path(artifact_path: str | Path) -> Path:
    p = Path(artifact_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def validate(d: Any, *, source: str = "card") -> None:
    """Validate a card document against the schema; one-line CardError on failure."""
    import jsonschema

    if not isinstance(d, dict):
        raise CardError(f"{source}: a card must be a JSON object")
    version = d.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise CardError(
            f"{source}: card schema version {version} is newer than this edgederm supports "
            f"({SCHEMA_VERSION}); upgrade edgederm"
        )
    try:
        jsonschema.validate(d, _schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise CardError(f"{source}: invalid card at {where}: {e.message}") from None


def read_sidecar(artifact_path: str | Path) -> ArtifactCard | None:
    side = sidecar_path(artifact_path)
    if not side.exists():
        return None
    return ArtifactCard.from_json(side.read_text(encoding="utf-8"), source=str(side))


def read_embedded_card(path: str | Path) -> ArtifactCard | None:
    """The card embedded in an artifact (None: its format embeds none, or it has none)."""
    from .formats.table import format_for, read_card_text

    p = Path(path)
    fmt = format_for(p)
    if fmt.metadata is not None and not fmt.runtime_available():
        raise MissingExtraError(fmt.extra or fmt.name, fmt.module or fmt.name, f"{fmt.name} artifacts")
    text = read_card_text(p)
    return None if text is None else ArtifactCard.from_json(text, source=f"{p} (embedded)")


def embed_card(path: str | Path, card: ArtifactCard) -> None:
    """Write ``card`` inside the artifact (replacing an older one), atomically; one-line error for
    a format that embeds none (TensorRT engines: the sidecar is their card)."""
    from .formats.table import write_card_text

    write_card_text(path, card.to_json())


def load_card(path: str | Path) -> ArtifactCard:
    """A card from a ``.card.json`` file, or the card of an artifact (embedded, else sidecar).

    For an artifact, the file is first checked against the SHA-256 its sidecar recorded
    (``verify_artifact``), then an embedded card and a sidecar must agree on every field that
    determines predictions (``check_agreement``).
    """
    p = Path(path)
    if not p.exists():
        raise CardError(f"{p}: no such file")
    if p.name.endswith(".json"):
        return ArtifactCard.from_json(p.read_text(encoding="utf-8"), source=str(p))
    side = read_sidecar(p)
    if side is not None:
        # Before parsing: a truncated or edited file is reported as modified, not as unreadable.
        verify_artifact(p, side)
    card = read_embedded_card(p)
    if card is not None and side is not None:
        check_agreement(card, side, source=str(p))
    if card is None:
        card = side
    if card is None:
        raise CardError(f"{p}: no embedded card and no {sidecar_path(p).name} sidecar")
    return card


# -- integrity --------------------------------------------------------------------------------------
def verify_artifact(path: str | Path, card: ArtifactCard) -> None:
    """Refuse an artifact whose bytes differ from the SHA-256 recorded in its sidecar card.

    ``card`` is the sidecar's (an embedded card cannot hold the hash of its own file). Checked:
    ``artifact.sha256`` against the file, and each of ``artifact.files`` (companions such as
    OpenVINO's ``.bin``) that exists beside it. Nothing is checked when no hash was recorded.
    """
    p = Path(path)
    art = card.artifact or {}
    expected = art.get("sha256")
    if not isinstance(expected, str) or not expected:
        return
    recorded = art.get("file") if isinstance(art.get("file"), str) else None
    # The sidecar is found through the artifact's own name, so it describes the file it sits next
    # to: an artifact copied or renamed together with its sidecar (model.onnx -> mel.onnx +
    # mel.onnx.card.json) is still verified, and the companions are looked up under the new stem.
    if recorded and recorded != p.name:
        log.debug("%s: the sidecar was written for %s; verifying this file against it", p, recorded)
    old_stem = Path(recorded).stem if recorded else p.stem
    checks: list[tuple[Path, str]] = [(p, expected)]
    files = art.get("files")
    for name, sha in (files.items() if isinstance(files, Mapping) else ()):
        if not isinstance(sha, str) or name == recorded:
            continue
        local = p.stem + name[len(old_stem):] if name.startswith(old_stem + ".") else name
        f = p.with_name(local)
        if f != p and f.is_file():
            checks.append((f, sha))
    for f, want in checks:
        got = sha256_file(f)
        if got != want.lower():
            was = f" (recorded for {recorded})" if recorded and recorded != p.name and f == p else ""
            raise IntegrityError(
                f"{f}: modified after export: SHA-256 {got[:12]}, but {sidecar_path(p).name} recorded "
                f"{want[:12]}{was}; re-export it or restore the original file"
            )


def _first_difference(a: Any, b: Any, where: str) -> str:
    """The path of the first place where two JSON values differ (``decision/thresholds/MEL``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                return _first_difference(a.get(key, _MISSING), b.get(key, _MISSING), f"{where}/{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}/{i}")
    return where


_MISSING = object()


def check_agreement(embedded: ArtifactCard, sidecar: ArtifactCard, *, source: str) -> None:
    """Refuse an artifact whose embedded card and sidecar disagree on what determines predictions.

    Either card alone would run the model differently (another class order, spec or threshold),
    so neither can be trusted over the other.
    """
    a, b = embedded.to_dict(), sidecar.to_dict()
    for key in PREDICTION_FIELDS:
        if a.get(key) != b.get(key):
            where = _first_difference(a.get(key), b.get(key), key)
            raise CardError(
                f"{source}: the embedded card and the {sidecar_path(source).name} sidecar disagree on "
                f"{where}; re-export the artifact (or delete the stale sidecar)"
            )


# -- cross-field checks -----------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _class_problems(d: Mapping[str, Any]) -> list[str]:
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes:
        return ["classes: must be a non-empty list"]
    out = [f"classes/{i}: must be a non-empty string" for i, c in enumerate(classes) if not isinstance(c, str) or not c]
    dupes = sorted({c for c in classes if isinstance(c, str) and classes.count(c) > 1})
    if dupes:
        out.append(f"classes: duplicated {dupes}")
    return out


def _decision_problems(d: Mapping[str, Any], *, strict: bool) -> list[str]:
    """Decision rule problems; ``strict`` adds the merely suspicious (for ``card validate``)."""
    dec = d.get("decision")
    if not isinstance(dec, Mapping):
        return ["decision: must be an object"]
    classes = [c for c in d.get("classes") or [] if isinstance(c, str)] if isinstance(d.get("classes"), list) else []
    out = []
    rule = dec.get("rule", "argmax")
    if rule not in DECISION_RULES:
        out.append(f"decision/rule: unknown rule {rule!r} (known: {', '.join(DECISION_RULES)})")
    thresholds = dec.get("thresholds", {})
    if not isinstance(thresholds, Mapping):
        out.append("decision/thresholds: must be an object (class -> threshold)")
        thresholds = {}
    for name, t in thresholds.items():
        if name not in classes:
            out.append(f"decision/thresholds/{name}: {name!r} is not one of the classes {classes}")
        # A threshold of 0 fires on every image and 1 on (almost) none: neither is an operating point.
        if not _is_number(t) or not math.isfinite(t) or not 0.0 < t < 1.0:
            out.append(f"decision/thresholds/{name}: {t!r} is not a number in (0, 1)")
    priority = dec.get("priority", [])
    if not isinstance(priority, list):
        out.append("decision/priority: must be a list of class names")
        priority = []
    for i, name in enumerate(priority):
        if name not in classes:
            out.append(f"decision/priority/{i}: {name!r} is not one of the classes {classes}")
    if strict:
        dupes = sorted({n for n in priority if isinstance(n, str) and priority.count(n) > 1})
        if dupes:
            out.append(f"decision/priority: lists {dupes} more than once")
        if rule == "priority_thresholds" and "priority" in dec:
            # decide() walks only the priority list: a threshold outside it is never applied.
            out += [f"decision/thresholds/{n}: not in decision/priority, so it is never applied"
                    for n in thresholds if n not in priority and n in classes]
    return out


def _tta_problems(d: Mapping[str, Any]) -> list[str]:
    from .tta import VIEWS

    tta = d.get("tta", {"views": ["identity"]})
    if not isinstance(tta, Mapping):
        return ["tta: must be an object"]
    views = tta.get("views", ["identity"])
    if not isinstance(views, list) or not views:
        return ["tta/views: must be a non-empty list of view names"]
    unknown = [v for v in views if v not in VIEWS]
    return [f"tta/views: unknown views {unknown} (known: {', '.join(sorted(VIEWS))})"] if unknown else []


def _preprocessing_problems(d: Mapping[str, Any]) -> list[str]:
    pp = d.get("preprocessing")
    if not isinstance(pp, Mapping):
        return ["preprocessing: must be an object"]
    out = []
    unknown = sorted(set(pp) - set(PreprocessSpec.__dataclass_fields__))
    if unknown:
        out.append(f"preprocessing: unknown fields {unknown}")
    size = pp.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        out.append(f"preprocessing/input_size: {size!r} is not [height, width] of positive integers")
    for key in ("mean", "std"):
        v = pp.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) and math.isfinite(x) for x in v)):
            out.append(f"preprocessing/{key}: {v!r} is not 3 finite numbers")
        elif key == "std" and any(x <= 0 for x in v):
            out.append(f"preprocessing/std: {v!r} must be positive (it divides)")
    choices = {"channel_order": ("RGB", "BGR"), "layout": ("NCHW", "NHWC"), "dtype": ("float32", "float16", "uint8", "int8"),
               "resize": ("shorter", "stretch", "pad"), "interpolation": ("nearest", "bilinear", "bicubic", "lanczos")}
    for key, allowed in choices.items():
        if key in pp and pp[key] not in allowed:
            out.append(f"preprocessing/{key}: {pp[key]!r} is not one of {', '.join(allowed)}")
    crop = pp.get("crop_pct", 0.875)
    if not _is_number(crop) or not math.isfinite(crop) or crop <= 0:
        out.append(f"preprocessing/crop_pct: {crop!r} must be a positive number")
    if pp.get("dtype") in ("uint8", "int8"):
        scale, zp = pp.get("input_scale"), pp.get("input_zero_point")
        if not (_is_number(scale) and math.isfinite(scale) and scale > 0) or not isinstance(zp, int):
            out.append("preprocessing: integer input needs input_scale > 0 and an integer input_zero_point")
    pad = pp.get("pad_value", [0, 0, 0])
    if not (isinstance(pad, list) and len(pad) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in pad)):
        out.append(f"preprocessing/pad_value: {pad!r} is not 3 integers in 0..255")
    if not isinstance(pp.get("exact_decode", False), bool):
        out.append(f"preprocessing/exact_decode: {pp['exact_decode']!r} must be true or false")
    version = pp.get("version", SPEC_VERSION)
    if isinstance(version, int) and version > SPEC_VERSION:
        out.append(f"preprocessing/version: {version} is newer than this edgederm understands ({SPEC_VERSION})")
    return out


def _model_problems(d: Mapping[str, Any]) -> list[str]:
    model = d.get("model")
    if not isinstance(model, Mapping):
        return ["model: must be an object"]
    out = []
    members = model.get("members")
    if isinstance(members, list) and members and model.get("combine", "weighted_mean") != "logit_stacking":
        weights = [m.get("weight", 1.0) for m in members if isinstance(m, Mapping)]
        if all(_is_number(w) for w in weights) and sum(weights) <= 0:
            out.append("model/members: the ensemble weights sum to 0")
    if model.get("combine") == "logit_stacking" and not isinstance(model.get("stacking"), Mapping):
        out.append("model/stacking: combine is logit_stacking but no fitted stacker is recorded")
    return out


def check_consistency(card: ArtifactCard | Mapping[str, Any]) -> list[str]:
    """Cross-field problems the JSON schema cannot express, as ``"where: what"`` lines.

    Decision classes and priority within ``classes``, thresholds finite and in (0, 1), a known
    rule, unique classes, a sane preprocessing spec, known TTA views, usable ensemble weights.
    Empty when the card is consistent. Works on raw documents (they may also violate the schema).
    """
    d = card.to_dict() if isinstance(card, ArtifactCard) else card
    if not isinstance(d, Mapping):
        return ["(top level): a card must be a JSON object"]
    return [*_class_problems(d), *_preprocessing_problems(d), *_model_problems(d), *_tta_problems(d),
            *_decision_problems(d, strict=True)]


def check_runnable(card: ArtifactCard, *, source: str) -> None:
    """Refuse (one-line CardError) a card the runtime cannot follow faithfully: a decision naming a
    class the model does not have, a threshold outside (0, 1), an unknown rule or TTA view.

    Only what would make predictions wrong or crash later; the merely suspicious (a threshold
    left out of the priority list) is for ``card validate`` to report.
    """
    d = card.to_dict()
    problems = [*_class_problems(d), *_decision_problems(d, strict=False), *_tta_problems(d)]
    if problems:
        more = f" (and {len(problems) - 1} more; see `edgederm card validate`)" if len(problems) > 1 else ""
        raise CardError(f"{source}: invalid card: {problems[0]}{more}")


def card_problems(d: Any) -> list[str]:
    """Every schema violation and cross-field problem of a card document (empty: valid)."""
    import jsonschema

    if not isinstance(d, dict):
        return ["(top level): a card must be a JSON object"]
    version = d.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        return [f"schema_version: {version} is newer than this edgederm supports ({SCHEMA_VERSION}); upgrade edgederm"]
    schema = _schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    out, seen = [], set()
    for e in sorted(validator.iter_errors(d), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        seen.add(where)
        out.append(f"{where}: {e.message}")
    # The cross-field checks restate some schema rules (a threshold of 1.5, a zero std): report a
    # place once, by the schema, when the schema already found something at or below it.
    for problem in check_consistency(d):
        where = problem.split(":", 1)[0]
        if not any(s == where or s.startswith(where + "/") for s in seen):
            out.append(problem)
    return out


def validate_path(path: str | Path) -> tuple[ArtifactCard | None, list[str]]:
    """``edgederm card validate``: the card of a ``.card.json`` or artifact and all its problems.

    An artifact must also pass the integrity and agreement checks of ``load_card`` (they raise),
    and the precision its card records must be what the file holds (``formats.precision``).
    A ``.card.json`` is read as a raw document so every schema problem is listed, not the first.
    """
    p = Path(path)
    if p.name.endswith(".json") and p.exists():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CardError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        problems = card_problems(d)
        return (None if problems else ArtifactCard.from_dict(d, source=str(p))), problems
    card = load_card(p)
    return card, [*check_consistency(card), *_precision_problems(p, card)]


def _precision_problems(path: Path, card: ArtifactCard) -> list[str]:
    """The card's ``artifact.precision`` (and op counts) against the ones counted in the file."""
    from .formats.precision import measure, problems

    recorded = card.artifact or {}
    if "precision" not in recorded:
        return []
    try:
        measured = measure(path, recorded.get("exporter"))
    except (ImportError, MissingExtraError) as e:  # the format's toolkit is not installed here
        log.info("%s: precision not checked (%s)", path, e)
        return []
    return problems(recorded, measured) if measured is not None else []
