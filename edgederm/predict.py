"""``edgederm predict``: classify many images with any artifact, streaming the results.

Inputs are files, folders (recursive) and glob patterns. Images are decoded by a small thread
pool while the model runs batches in the main thread, so the decode of batch k+1 overlaps the
inference of batch k (PIL and the runtimes release the GIL). Results are written batch by batch
and flushed, so an interrupted run keeps every complete line, and ``--resume`` continues a file:

* ``text``: one line per image (path, decision, top-3 probabilities);
* ``jsonl``: one JSON object per image: image, decision, probabilities, warnings;
* ``csv``: ``image,decision,<class>...,warnings``;
* ``isic``: the ISIC 2018 Task 3 submission ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (image id =
  file stem; the artifact's classes are mapped by ``taxonomy.isic2018_matrix``);
* ``json``: one JSON array at the end (not streamed; the old ``--json``).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image

from .data.readers import IMAGE_SUFFIXES
from .data.sanity import input_warnings
from .errors import EdgedermError, ImageError
from .progress import progress_bar
from .runtime.base import Predictor

log = logging.getLogger(__name__)

FORMATS = ("text", "jsonl", "csv", "isic", "json")
#: Formats whose files ``--resume`` can continue (line-oriented, one image per line).
RESUMABLE = ("jsonl", "csv", "isic", "text")
_GLOB_CHARS = "*?["
T = TypeVar("T")
R = TypeVar("R")


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``run_predict``; what was written is flushed. Carries the summary so far."""

    def __init__(self, summary: "PredictSummary") -> None:
        super().__init__()
        self.summary = summary


@dataclass
class PredictSummary:
    total: int = 0  # images named by the inputs
    previous: int = 0  # already in the --resume file
    written: int = 0  # results written by this run
    skipped: list[str] = field(default_factory=list)  # one-line reasons
    warned: int = 0  # images with at least one input warning
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# -- inputs ---------------------------------------------------------------------------------------
def _images_under(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders searched recursively and glob patterns (``**`` too) expanded.

    Folders and patterns yield image files (by suffix) in sorted order; a file named explicitly
    is kept whatever its suffix, so a bad one is reported rather than silently dropped. Each file
    appears once (the first spelling wins). A folder or pattern without images is an error.
    """
    out: list[Path] = []
    for entry in inputs:
        text = os.fspath(entry)
        path = Path(text)
        if path.is_dir():
            hits = _images_under(path)
            if not hits:
                raise EdgedermError(f"{text}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += hits
        elif not path.exists() and any(ch in text for ch in _GLOB_CHARS):
            hits = []
            for h in sorted(glob.glob(text, recursive=True)):
                hp = Path(h)
                if hp.is_dir():
                    hits += _images_under(hp)
                elif hp.suffix.lower() in IMAGE_SUFFIXES and hp.is_file():
                    hits.append(hp)
            if not hits:
                raise EdgedermError(f"{text}: the pattern matches no image")
            out += hits
        else:
            out.append(path)  # a file, or a missing one: the decoder says which, per image
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def image_id(path: Path) -> str:
    """The ISIC image id of a file: its stem, without ISIC 2019's ``_downsampled`` suffix."""
    stem = path.stem
    return stem[: -len("_downsampled")] if stem.endswith("_downsampled") else stem


# -- output formats -------------------------------------------------------------------------------
def _num(v: float) -> str:
    # repr keeps full precision and always reads back as a float ("1.0", "3e-09"): the ISIC scorer
    # refuses a column that pandas parses as integers.
    return repr(float(v))


class Writer:
    """Turns results into lines of one format; knows its header and how to key a written line."""

    def __init__(self, fmt: str, classes: Sequence[str], taxonomy: str | None = None) -> None:
        if fmt not in FORMATS:
            raise EdgedermError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.fmt = fmt
        self.classes = list(classes)
        self.matrix: np.ndarray | None = None
        if fmt == "isic":
            from .data.taxonomy import ISIC2018_COLUMNS, isic2018_matrix

            self.matrix = isic2018_matrix(self.classes, taxonomy)
            self.columns = list(ISIC2018_COLUMNS)

    @property
    def header(self) -> str | None:
        if self.fmt == "csv":
            return _csv_line(["image", "decision", *self.classes, "warnings"])
        if self.fmt == "isic":
            return _csv_line(["image", *self.columns])
        return None

    def key(self, path: Path) -> str:
        """What identifies an image in the output (resolved path; image id for ISIC)."""
        return image_id(path) if self.fmt == "isic" else str(path.resolve())

    def line(self, path: Path, decision: str, probs: np.ndarray, warnings: list[str]) -> str:
        if self.fmt == "jsonl":
            return json.dumps({"image": str(path), "decision": decision,
                               "probabilities": dict(zip(self.classes, map(float, probs))),
                               "warnings": warnings}) + "\n"
        if self.fmt == "csv":
            return _csv_line([str(path), decision, *map(_num, probs), "; ".join(warnings)])
        if self.fmt == "isic":
            assert self.matrix is not None
            cols = np.clip(np.asarray(probs, dtype=np.float64) @ self.matrix, 0.0, 1.0)  # sums may round past 1
            return _csv_line([image_id(path), *map(_num, cols)])
        top = sorted(zip(self.classes, map(float, probs)), key=lambda kv: -kv[1])[:3]
        return f"{path}: {decision}  (" + ", ".join(f"{k} {v:.3f}" for k, v in top) + ")\n"

    def key_of_line(self, line: str) -> str:
        """The key of a line this writer wrote (for ``--resume``)."""
        if self.fmt == "jsonl":
            return str(Path(json.loads(line)["image"]).resolve())
        if self.fmt in ("csv", "isic"):
            first = next(csv.reader([line]))[0]
            return first if self.fmt == "isic" else str(Path(first).resolve())
        # text: "<path>: <decision>  (...)"; the path may hold ": " itself, the decision may not.
        return str(Path(line.rsplit(": ", 1)[0]).resolve())


def _csv_line(fields: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def read_done(out: Path, writer: Writer) -> set[str]:
    """Keys already in ``out`` (a file of ``writer``'s format) for ``--resume``.

    A partial last line (the run was killed mid-write) is cut off the file. The header must be
    this run's (same format and classes): appending other columns would corrupt the file.
    """
    if not out.exists() or out.stat().st_size == 0:
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropped a partial last line (%d bytes) left by an interrupted run", out, len(data) - end)
        with open(out, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    lines = data.decode("utf-8").splitlines()
    header = writer.header
    if header is not None and lines:
        if lines[0] + "\n" != header:
            raise EdgedermError(
                f"{out}: its header is not this run's ({header.strip()!r}); a different format or class list?"
            )
        lines = lines[1:]
    done: set[str] = set()
    for i, line in enumerate(lines, start=2 if header else 1):
        if not line.strip():
            continue
        try:
            done.add(writer.key_of_line(line))
        except (ValueError, KeyError, IndexError, StopIteration):
            raise EdgedermError(f"{out}:{i}: not a {writer.fmt} line of edgederm predict; cannot resume this file") from None
    return done


# -- the run --------------------------------------------------------------------------------------
Decoded = tuple[Path, Image.Image | None, list[str], str | None]  # path, image, warnings, error


def _decoder(predictor: Predictor, check: bool) -> Callable[[Path], Decoded]:
    size = max(max(h.spec.input_size) for h in predictor.heads())

    def decode(path: Path) -> Decoded:
        try:
            img = predictor.load_image(path)
        except ImageError as e:
            return path, None, [], str(e)
        return path, img, input_warnings(path, img, size) if check else [], None

    return decode


def ordered_map(fn: Callable[[T], R], items: Sequence[T], workers: int, ahead: int) -> Iterator[R]:
    """``fn(x)`` for each item, in order; with ``workers`` threads and at most ``ahead`` in flight
    (bounded memory: decoded images wait for the model, not the other way round)."""
    if workers <= 0:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    pending: deque[Future[R]] = deque()
    it = iter(items)
    try:
        for p in it:
            pending.append(pool.submit(fn, p))
            if len(pending) >= ahead:
                break
        while pending:
            res = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield res
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def run_predict(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    fmt: str = "text",
    out: Path | None = None,
    resume: bool = False,
    batch_size: int = 16,
    workers: int = 2,
    tta: bool | Sequence[str] | None = None,
    progress: bool | None = None,
    check_inputs: bool = True,
    stdout: IO[str] | None = None,
) -> PredictSummary:
    """Predict every image of ``inputs``, writing ``fmt`` lines to ``out`` (or stdout) per batch.

    Unreadable images are skipped with a warning and counted; input warnings (``data.sanity``) are
    logged once per image and recorded in jsonl/csv/json output. Ctrl-C raises
    ``PredictInterrupted`` after flushing what was written.
    """
    if batch_size < 1:
        raise EdgedermError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise EdgedermError(f"--workers must be 0 or more, got {workers}")
    writer = Writer(fmt, predictor.classes, predictor.card.taxonomy or None)
    paths = expand_inputs(inputs)
    if fmt == "isic":
        ids: dict[str, Path] = {}
        for p in paths:
            other = ids.setdefault(image_id(p), p)
            if other is not p:
                raise EdgedermError(f"two images have the ISIC id {image_id(p)!r} ({other} and {p}): the submission needs one row per id")
    if resume:
        if out is None:
            raise EdgedermError("--resume continues an --out file: give --out")
        if fmt not in RESUMABLE:
            raise EdgedermError(f"--resume works with --format {', '.join(RESUMABLE)}, not {fmt}")
    elif out is not None and out.exists() and out.stat().st_size > 0:
        raise EdgedermError(f"{out} exists: --resume continues it; remove it to start over")
    summary = PredictSummary(total=len(paths))
    done = read_done(out, writer) if resume and out is not None else set()
    if done:
        paths = [p for p in paths if writer.key(p) not in done]
        summary.previous = summary.total - len(paths)
        log.info("resuming %s: %d of %d images done, %d to go", out, summary.previous, summary.total, len(paths))

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    # json is one array written at the end (to ``out`` at once, so an interrupted run leaves none).
    if out is not None and fmt != "json":
        fh: IO[str] = open(out, "a", encoding="utf-8", newline="")
    else:
        fh = stdout or sys.stdout
    if writer.header and (out is None or fh.tell() == 0):
        fh.write(writer.header)
        fh.flush()
    rows: list[dict[str, Any]] = []  # json only
    t0 = time.perf_counter()
    try:
        with progress_bar(summary.total, f"predict {predictor.path.name}", force=progress, initial=summary.previous) as bar:
            batch: list[Decoded] = []

            def flush() -> None:
                if batch:
                    items = [d[1] for d in batch]  # decoded; the card's segmenter runs inside predict
                    probs, pred = predictor.predict(items, tta=tta, batch_size=batch_size)
                    lines = []
                    for (path, _, warns, _), p, k in zip(batch, probs, pred):
                        decision = predictor.classes[int(k)]
                        if fmt == "json":
                            rows.append({"image": str(path), "decision": decision,
                                         "probabilities": dict(zip(predictor.classes, map(float, p))), "warnings": warns})
                        else:
                            lines.append(writer.line(path, decision, p, warns))
                    # One write per batch, then flush: a Ctrl-C lands between whole batches.
                    fh.write("".join(lines))
                    fh.flush()
                    summary.written += len(batch)
                    bar.update(len(batch))
                    batch.clear()

            decode = _decoder(predictor, check_inputs)
            for path, img, warns, err in ordered_map(decode, paths, workers, ahead=batch_size + 2 * workers):
                if err is not None:
                    summary.skipped.append(err)
                    log.warning("skipped: %s", err)
                    bar.update(1)
                    continue
                if warns:
                    summary.warned += 1
                    for w in warns:
                        log.warning("%s: %s", path, w)
                batch.append((path, img, warns, None))
                if len(batch) == batch_size:
                    flush()
            flush()
    except KeyboardInterrupt:
        summary.seconds = time.perf_counter() - t0
        raise PredictInterrupted(summary) from None
    finally:
        fh.flush()
        if out is not None and fmt != "json":
            fh.close()
    summary.seconds = time.perf_counter() - t0
    if fmt == "json":
        text = json.dumps(rows, indent=2) + "\n"
        if out is not None:
            from .fsutil import write_text_atomic

            write_text_atomic(out, text)
        else:
            fh.write(text)
            fh.flush()
    return summary
