"""What every export target starts from: one FP32 model, its card, its data.

``ExportContext.from_path(RUN or checkpoint)`` loads the single FP32 model (eval mode, CPU,
logits out), its card and ``PreprocessSpec``, and gives the targets what they share: an example
input, class-balanced calibration batches from the run's **train** split (never validation or
test: the gate judges artifacts on validation), a cached FP32 ONNX export (legacy exporter,
opset 17, dynamic batch) and the card of a new artifact.

Export works on single-model checkpoints (a distilled student, or a one-member run). An ensemble
cannot become one edge artifact: ``edgederm export RUN`` then picks the student at
``RUN/distill-*/model.pt`` if there is one, else says in one line to distil first.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..card import ArtifactCard, provenance
from ..checkpoint import Member, load_checkpoint
from ..data.records import DatasetIndex, Record
from ..errors import DataError, EdgedermError
from ..fsutil import jsonable, sha256_file
from ..preprocess import PreprocessSpec
from ..numerics import softmax
from ..provenance import command

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


# -- finding the model ----------------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """``(checkpoint, run folder)`` for a run folder or a checkpoint file.

    A run folder means its ``model.pt``; an ensemble checkpoint is replaced by the newest
    distilled student ``RUN/distill-*/model.pt``, else refused with what to do instead.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        run_dir, ckpt = p, p / "model.pt"
        if not ckpt.exists():
            students = _students(run_dir)
            if students:
                return students[-1], run_dir
            raise EdgedermError(f"{run_dir} has no model.pt: not a training run folder (pass a run folder or a .pt checkpoint)")
    elif p.is_file():
        ckpt, run_dir = p, p.parent
    else:
        raise EdgedermError(f"{p}: no such run folder or checkpoint")
    members, _ = load_checkpoint(ckpt)
    if len(members) > 1:
        students = _students(run_dir)
        if students:
            log.info("%s is a %d-member ensemble; exporting the distilled student %s", ckpt, len(members), students[-1])
            return students[-1], run_dir
        raise EdgedermError(
            f"{ckpt} is a {len(members)}-member ensemble; an edge artifact holds one model: "
            f"distil it first (edgederm distill {run_dir}) and export again"
        )
    return ckpt, run_dir


def _students(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob("distill-*/model.pt") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


# -- data of a run --------------------------------------------------------------------------------
def _recipe(folder: Path) -> dict[str, Any]:
    f = folder / "recipe.yaml"
    if not f.exists():
        return {}
    import yaml

    try:
        d = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    return d if isinstance(d, dict) else {}


def _split_ids(path: Path) -> set[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        fh.readline()  # the '# edgederm-split {...}' metadata line
        return {(row.get("image_id") or "").strip() for row in csv.DictReader(fh)}


def load_split_index(
    card: ArtifactCard,
    split: str | None,
    *,
    data: str | Path | None = None,
    fmt: str | None = None,
    split_file: str | Path | None = None,
    run_dir: Path | None = None,
) -> DatasetIndex:
    """The ``split`` part (train / val / test; ``None`` = everything) of the data a card was
    trained on, or of ``data`` read with the card's taxonomy.

    The data root and split file default to the card's ``data`` section; the reader format to
    the card's, else the run's recipe, else auto-detection. Only images listed in the split file
    are used (a run may have subsampled or dropped unreadable images); the split file's data
    fingerprint must then match, so a split made for other data is refused.
    """
    from ..data.readers import read_dataset
    from ..data.splits import apply_split, read_split_csv, read_split_meta

    recipe = _recipe(run_dir) if run_dir is not None else {}
    root = Path(data) if data is not None else (Path(card.data["root"]) if card.data.get("root") else None)
    if root is None:
        raise EdgedermError(f"card {card.name!r} does not say where its data is: pass --data")
    if not root.exists():
        raise EdgedermError(f"the data set {root} is not here: pass --data with its location")
    fmt = fmt or card.data.get("format") or recipe.get("format") or "auto"
    index = read_dataset(root, fmt, taxonomy=card.taxonomy or None)
    card.check_classes(index.classes, what=f"data set {index.name!r}")
    if split is None:
        return index
    sf: Path | None = Path(split_file) if split_file is not None else None
    if sf is None:
        for cand in (card.data.get("split_file"), run_dir / "split.csv" if run_dir else None):
            if cand and Path(cand).exists():
                sf = Path(cand)
                break
    if sf is None or not sf.exists():
        raise EdgedermError(f"no split file for card {card.name!r} ({card.data.get('split_file') or 'none recorded'}): pass --split-file")
    if read_split_meta(sf).get("kind") == "kfold":
        raise EdgedermError(f"{sf} is a k-fold split; the gate needs a train/val/test split file (--split-file)")
    listed = _split_ids(sf)
    sub = index.subset([i for i, r in enumerate(index.records) if r.image_id in listed])
    parts = apply_split(sub, read_split_csv(sf, sub))
    if split not in parts:
        raise EdgedermError(f"{sf} has no split {split!r}")
    part = parts[split]
    if len(part) == 0:
        raise DataError(f"split {split!r} of {sf} is empty")
    return part


def balanced_order(records: Sequence[Record], seed: int = 0) -> list[Record]:
    """Records interleaved class by class (each class shuffled with ``seed``), so the first n
    cover the rare classes too: quantization ranges must include what melanomas look like."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_class[r.label].append(r)
    queues = []
    for label in sorted(by_class):
        recs = by_class[label]
        queues.append([recs[i] for i in rng.permutation(len(recs))])
    out: list[Record] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


class CalibrationSet:
    """Re-iterable batches (NCHW float32, the FP32 model's input) of calibration images.

    Converters iterate more than once (ORT calibrates, NNCF counts, TensorRT re-reads), so this
    decodes on each pass instead of holding every image in memory.
    """

    def __init__(self, ctx: "ExportContext", records: list[Record], batch: int) -> None:
        self.ctx = ctx
        self.records = records
        self.batch = max(1, int(batch))

    def __len__(self) -> int:
        return (len(self.records) + self.batch - 1) // self.batch

    @property
    def n_images(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.records), self.batch):
            yield self.ctx.preprocess_records(self.records[start : start + self.batch])


# -- the context ----------------------------------------------------------------------------------
class ExportContext:
    """One single-model FP32 checkpoint, ready to be exported to any target."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        run_dir: str | Path | None = None,
        data: str | Path | None = None,
        data_format: str | None = None,
        split_file: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.run_dir = Path(run_dir) if run_dir is not None else self.checkpoint.parent
        members, card = load_checkpoint(self.checkpoint)
        if len(members) != 1:
            raise EdgedermError(
                f"{self.checkpoint} is a {len(members)}-member ensemble; distil it first (edgederm distill {self.run_dir})"
            )
        if card.task != "classification":
            raise EdgedermError(f"{self.checkpoint} is a {card.task} checkpoint; export handles classifiers")
        self.member: Member = members[0]
        self.card = card
        meta = card.model.get("members") or [{"name": self.member.name}]
        self.member_info: dict[str, Any] = dict(meta[0]) if len(meta) == 1 else {"name": self.member.name}
        self.member_info["weight"] = 1.0
        self.spec: PreprocessSpec = (
            PreprocessSpec.from_dict(self.member_info["preprocessing"]) if "preprocessing" in self.member_info else card.preprocessing
        )
        if self.spec.layout != "NCHW" or self.spec.dtype != "float32":
            raise EdgedermError(f"{self.checkpoint}: a PyTorch checkpoint should take NCHW float32 input, its card says {self.spec.layout} {self.spec.dtype}")
        self.data = data
        self.data_format = data_format
        self.split_file = split_file
        self._own_cache = cache_dir is None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="edgederm-export-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._model: Any = None
        self._onnx: Path | None = None
        self._sha: str | None = None
        self._splits: dict[str, DatasetIndex] = {}
        self._seg: Callable[[Any], Any] | None | bool = False

    @classmethod
    def from_path(cls, run_or_checkpoint: str | Path, **kw: Any) -> "ExportContext":
        ckpt, run_dir = resolve_checkpoint(run_or_checkpoint)
        return cls(ckpt, run_dir=run_dir, **kw)

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._own_cache and self.cache_dir.exists():
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    def __enter__(self) -> "ExportContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the model -----------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The FP32 ``nn.Module`` (eval, CPU), built once."""
        if self._model is None:
            self._model = self.member.build().float().eval().cpu()
        return self._model

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def checkpoint_sha256(self) -> str:
        if self._sha is None:
            self._sha = sha256_file(self.checkpoint)
        return self._sha

    def example(self, batch: int = 1) -> Any:
        """A real preprocessed input (the first calibration images), as a torch tensor."""
        import torch

        try:
            recs = balanced_order(self.split("train").records)[:batch]
            x = self.preprocess_records(recs) if len(recs) == batch else None
        except EdgedermError:
            x = None  # no data here: a deterministic stand-in of the right shape serves tracing
        if x is None:
            x = np.random.default_rng(0).standard_normal((batch, 3, self.spec.height, self.spec.width)).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x))

    def onnx_fp32(self) -> Path:
        """The FP32 ONNX graph (legacy exporter, opset 17, dynamic batch), exported once."""
        if self._onnx is not None and self._onnx.exists():
            return self._onnx
        import torch

        from ..fsutil import atomic_path

        out = self.cache_dir / f"fp32-{self.checkpoint_sha256[:16]}.onnx"
        if not out.exists():
            import warnings

            with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
                # The legacy exporter is chosen on purpose (fast, reliable for these CNNs and
                # ViTs at opset 17; see the toolchain notes): its deprecation notice is noise.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    self.model, (self.example(),), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True,
                )
            log.info("exported the FP32 ONNX graph (%.1f MB)", out.stat().st_size / 1e6)
        self._onnx = out
        return out

    # -- data ----------------------------------------------------------------------------------
    def split(self, name: str) -> DatasetIndex:
        """The run's ``name`` split (train / val / test), read once."""
        if name not in self._splits:
            self._splits[name] = load_split_index(
                self.card, name, data=self.data, fmt=self.data_format, split_file=self.split_file, run_dir=self.run_dir
            )
        return self._splits[name]

    def _segmenter(self) -> Callable[[Any], Any] | None:
        if self._seg is False:
            entry = self.card.model.get("segmenter")
            if entry:
                from ..seg.apply import segmenter_from_card_entry

                self._seg = segmenter_from_card_entry(entry)
            else:
                self._seg = None
        return self._seg  # type: ignore[return-value]

    def preprocess_records(self, records: Sequence[Record]) -> np.ndarray:
        """Decode and preprocess exactly as the runtime does (identity view): (N, 3, H, W) float32."""
        from ..data.images import load_image
        from ..preprocess import decode_size

        seg = self._segmenter()
        size = decode_size(self.spec, segmenter=seg)  # the runtime's rule (Predictor.decode_size)
        arrs = []
        for r in records:
            img = load_image(r.ref, decode_size=size)
            if seg is not None:
                img = seg(img)
            arrs.append(self.spec.apply(img))
        return np.ascontiguousarray(np.stack(arrs), dtype=np.float32)

    def calibration_batches(self, n: int, batch: int = 8, *, seed: int = 0) -> CalibrationSet:
        """``n`` train-split images (class-balanced, deterministic) in batches of ``batch``."""
        if n < 1:
            raise EdgedermError(f"calibration needs at least one image, got n={n}")
        recs = balanced_order(self.split("train").records, seed=seed)[: int(n)]
        if len(recs) < n:
            log.info("calibration: the train split has %d images (asked for %d)", len(recs), n)
        return CalibrationSet(self, recs, batch)

    def bacc_validator(self, n: int = 300) -> Callable[[Any], float]:
        """``validate(model) -> BACC`` (argmax) on ``n`` train-split images, for converters with
        accuracy control. Train images, not validation: validation is reserved for the gate."""
        from ..metrics import classification_report

        recs = balanced_order(self.split("train").records, seed=1)[:n]
        x = self.preprocess_records(recs)
        y = np.array([self.classes.index(r.label) for r in recs])

        def validate(model: Any) -> float:
            outs = [np.asarray(_call(model, x[i : i + 1]), dtype=np.float64).reshape(1, -1) for i in range(len(x))]
            logits = np.concatenate(outs)
            return float(classification_report(y, softmax(logits), self.classes)["bacc"])

        return validate

    # -- the artifact's card -------------------------------------------------------------------
    def export_card(
        self,
        *,
        target: str,
        fmt: str,
        precision: str,
        info: dict[str, Any] | None = None,
        recipe: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> ArtifactCard:
        """The card of a new artifact: the checkpoint's, made single-model, with the export
        recorded. ``info['preprocessing']`` (field → value) records an input that differs from
        the FP32 one (e.g. NHWC int8 of a full-integer TFLite model)."""
        info = dict(info or {})
        card = self.card.copy()
        spec = self.spec
        if isinstance(info.get("preprocessing"), dict):
            spec = spec.with_(**{k: tuple(v) if isinstance(v, list) else v for k, v in info.pop("preprocessing").items()})
        member = {**self.member_info, "preprocessing": spec.to_dict()}
        model = {k: v for k, v in card.model.items() if k != "stacking"}
        model.update(kind="single", combine="weighted_mean", members=[member])
        card.model = model
        card.preprocessing = spec
        card.metrics = {"reference": self.card.metrics} if self.card.metrics else {}
        card.artifact = {
            "format": fmt,
            "precision": precision,
            "target": target,
            "recipe": recipe or "default",
            "options": dict(options or {}),
            "exporter": jsonable(info),
            "source": {"checkpoint": str(self.checkpoint.resolve()), "sha256": self.checkpoint_sha256},
        }
        card.provenance = provenance(command=command(), source_provenance=self.card.provenance)
        card.history = [*self.card.history, {"event": "export", "target": target, "recipe": recipe or "default",
                                             "from": self.checkpoint_sha256, "at": card.provenance["created"]}]
        return card


def _call(model: Any, x: np.ndarray) -> np.ndarray:
    """Run a converter's model object (OpenVINO CompiledModel, callable session, torch module)."""
    if hasattr(model, "eval") and hasattr(model, "parameters"):  # torch
        import torch

        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    out = model(x)
    if isinstance(out, (list, tuple)):
        return np.asarray(out[0])
    try:
        return np.asarray(out[0])
    except (KeyError, TypeError, IndexError):
        return np.asarray(next(iter(out.values())))


def single_samples(calibration: Iterable[np.ndarray], limit: int | None = None) -> Iterator[np.ndarray]:
    """Calibration batches split into single-sample float32 NCHW arrays, at most ``limit``.

    NNCF counts samples and the TFLite quantizer feeds a batch-1 flatbuffer: both want one image
    per item, while ``ExportContext.calibration_batches`` yields batches.
    """
    n = 0
    for batch in calibration:
        arr = np.asarray(batch, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        for i in range(arr.shape[0]):
            if limit is not None and n >= limit:
                return
            yield np.ascontiguousarray(arr[i : i + 1])
            n += 1
