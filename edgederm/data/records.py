"""The in-memory index every reader returns.

A reader turns an official data-set layout into a ``DatasetIndex``: one ``Record`` per image with
its label (a class name of the index's taxonomy), its lesion and patient ids where the set has
them, and free-form metadata. Images are not decoded here; ``Record.ref`` is what
``edgederm.data.images.load_image`` understands (a file path, or ``file.npz::key[i]`` for arrays).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence


@dataclass(frozen=True)
class Record:
    """One labelled image of a data set."""

    image_id: str
    ref: str
    label: str
    lesion_id: str | None = None
    patient_id: str | None = None
    mask_ref: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def group(self) -> str:
        """The unit that must not cross splits: lesion, else patient, else the image itself."""
        if self.lesion_id:
            return f"lesion:{self.lesion_id}"
        if self.patient_id:
            return f"patient:{self.patient_id}"
        return f"image:{self.image_id}"


@dataclass
class Skipped:
    """An item a reader could not use, and why (kept so summaries can count them)."""

    item: str
    reason: str


@dataclass
class DatasetIndex:
    """A data set as a list of records plus its class taxonomy.

    ``classes`` is the ordered class list (the label space of ``Record.label``); its order is the
    order of model outputs. ``skipped`` lists what the reader dropped, with reasons.
    """

    name: str
    root: str
    classes: list[str]
    records: list[Record]
    skipped: list[Skipped] = field(default_factory=list)
    taxonomy: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def label_index(self, record: Record) -> int:
        return self.classes.index(record.label)

    def targets(self) -> list[int]:
        lookup = {c: i for i, c in enumerate(self.classes)}
        return [lookup[r.label] for r in self.records]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return {c: counts.get(c, 0) for c in self.classes}

    def groups(self) -> list[str]:
        return [r.group for r in self.records]

    def subset(self, indices: Iterable[int], name: str | None = None) -> "DatasetIndex":
        recs = [self.records[i] for i in indices]
        return DatasetIndex(
            name=name or self.name,
            root=self.root,
            classes=list(self.classes),
            records=recs,
            skipped=[],
            taxonomy=self.taxonomy,
        )

    def select_ids(self, image_ids: Sequence[str], name: str | None = None) -> "DatasetIndex":
        pos = {r.image_id: i for i, r in enumerate(self.records)}
        return self.subset([pos[i] for i in image_ids if i in pos], name=name)

    def fingerprint(self) -> str:
        """A short hash of (image_id, label, group) for provenance in cards and split files."""
        h = hashlib.sha256()
        h.update(",".join(self.classes).encode())
        for r in sorted(self.records, key=lambda r: r.image_id):
            h.update(f"\n{r.image_id}\t{r.label}\t{r.group}".encode())
        return h.hexdigest()[:16]
