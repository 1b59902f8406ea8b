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
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import CardError, ClassMismatchError
from .fsutil import sha256_file, write_json_atomic
from .preprocess import PreprocessSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".card.json"
EMBED_KEY = "edgederm.card"


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("edgederm").joinpath("card.schema.json").read_text())


def git_sha() -> str | None:
    """The commit of the edgederm checkout in use, if it is one (for provenance)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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


def load_card(path: str | Path) -> ArtifactCard:
    """A card from a ``.card.json`` file, or the card of an artifact (embedded, else sidecar)."""
    p = Path(path)
    if not p.exists():
        raise CardError(f"{p}: no such file")
    if p.name.endswith(".json"):
        return ArtifactCard.from_json(p.read_text(encoding="utf-8"), source=str(p))
    from .runtime import read_embedded_card  # late: the runtime registry knows every format

    card = read_embedded_card(p)
    if card is None:
        card = read_sidecar(p)
    if card is None:
        raise CardError(f"{p}: no embedded card and no {sidecar_path(p).name} sidecar")
    return card
