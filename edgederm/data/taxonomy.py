"""Label taxonomies of the dermoscopy data sets and the explicit mappings between them.

Everything that decides what a label *means* lives in this one module, so a reviewer can check the
clinical choices in one place:

* ``TAXONOMIES``: the canonical class lists (their order is the order of model outputs).
* ``SOURCE_ALIASES``: how the raw values found in each official release (HAM10000 ``dx``, ISIC 2019
  one-hot columns, PH2 ``Clinical Diagnosis`` codes, ISIC 2020 ``target`` and ``diagnosis``,
  DermaMNIST label indices) translate to canonical codes. Use ``normalize_label``.
* ``MAPPINGS``: explicit tables between taxonomies. ``map_label`` returns ``None`` when a class has
  no counterpart in the destination (ISIC 2019 ``UNK`` in HAM7, for instance); readers then skip
  the record with a reason instead of inventing a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgederm.errors import DataError

__all__ = [
    "Taxonomy",
    "TAXONOMIES",
    "HAM7",
    "ISIC2019_8",
    "ISIC2019_9",
    "PH2_3",
    "BINARY",
    "MALIGNANT_HAM7",
    "MAPPINGS",
    "SOURCE_ALIASES",
    "get_taxonomy",
    "map_label",
    "normalize_label",
    "is_malignant",
    "ISIC2018_COLUMNS",
    "isic2018_matrix",
]


@dataclass(frozen=True)
class Taxonomy:
    """An ordered class list with the subset of classes counted as malignant."""

    name: str
    classes: tuple[str, ...]
    malignant: frozenset[str]
    description: str = ""

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"taxonomy {self.name} has duplicate classes: {self.classes}")
        if not self.malignant <= set(self.classes):
            raise ValueError(f"taxonomy {self.name}: malignant classes not in the class list")

    def __contains__(self, label: object) -> bool:
        return label in self.classes

    def index(self, label: str) -> int:
        return self.classes.index(label)

    def canonical(self, label: str) -> str | None:
        """The class spelled as in this taxonomy, matching case-insensitively; None if absent."""
        if label in self.classes:
            return label
        folded = label.strip().casefold()
        for c in self.classes:
            if c.casefold() == folded:
                return c
        return None


# ISIC 2018 Task 3 / HAM10000, in the column order of the official ground-truth CSV.
HAM7 = Taxonomy(
    name="ham7",
    classes=("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
    malignant=frozenset({"MEL", "BCC", "AKIEC"}),
    description="HAM10000 / ISIC 2018 Task 3 (7 classes; AKIEC = actinic keratoses and "
    "intraepithelial carcinoma)",
)
# ISIC 2019, in the column order of ISIC_2019_Training_GroundTruth.csv. UNK ("none of the
# others") only occurs in the test set; the 8-class list is what the challenge trains on.
ISIC2019_8 = Taxonomy(
    name="isic2019_8",
    classes=("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"),
    malignant=frozenset({"MEL", "BCC", "AK", "SCC"}),
    description="ISIC 2019 (8 diagnostic classes)",
)
ISIC2019_9 = Taxonomy(
    name="isic2019_9",
    classes=ISIC2019_8.classes + ("UNK",),
    malignant=ISIC2019_8.malignant,
    description="ISIC 2019 (8 diagnostic classes + UNK, as in the ground-truth CSV)",
)
# PH2 clinical diagnosis codes 0, 1, 2 in that order.
PH2_3 = Taxonomy(
    name="ph2_3",
    classes=("common_nevus", "atypical_nevus", "melanoma"),
    malignant=frozenset({"melanoma"}),
    description="PH2 clinical diagnosis (0 common nevus, 1 atypical nevus, 2 melanoma)",
)
BINARY = Taxonomy(
    name="binary",
    classes=("benign", "malignant"),
    malignant=frozenset({"malignant"}),
    description="benign vs malignant (ISIC 2020 target)",
)

TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (HAM7, ISIC2019_8, ISIC2019_9, PH2_3, BINARY)}

# Used for "malignant balanced accuracy" and melanoma/malignant sensitivity reports.
MALIGNANT_HAM7: tuple[str, ...] = ("MEL", "BCC", "AKIEC")


def get_taxonomy(name: str | Taxonomy) -> Taxonomy:
    """The registered taxonomy ``name`` (case-insensitive); a ``Taxonomy`` is returned as is."""
    if isinstance(name, Taxonomy):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in TAXONOMIES:
        raise DataError(
            f"unknown taxonomy '{name}'; known taxonomies: {', '.join(sorted(TAXONOMIES))}"
        )
    return TAXONOMIES[key]


# --- raw labels of the official releases -------------------------------------------------------

# Source name -> (taxonomy of the codes, raw value -> code). A code of None means "a real value of
# that source that no class represents" (e.g. an ISIC 2020 lesion diagnosed only as "unknown").
SOURCE_ALIASES: dict[str, tuple[str, dict[str, str | None]]] = {
    # HAM10000_metadata.csv, column dx.
    "ham10000_dx": (
        "ham7",
        {
            "akiec": "AKIEC",
            "bcc": "BCC",
            "bkl": "BKL",
            "df": "DF",
            "mel": "MEL",
            "nv": "NV",
            "vasc": "VASC",
        },
    ),
    # ISIC2018_Task3_*_GroundTruth.csv one-hot column names.
    "isic2018_onehot": ("ham7", {c: c for c in HAM7.classes}),
    # ISIC_2019_Training_GroundTruth.csv one-hot column names (also the test subset's dx values).
    "isic2019_onehot": ("isic2019_9", {c: c for c in ISIC2019_9.classes}),
    # PH2_dataset.txt, column "Clinical Diagnosis".
    "ph2": ("ph2_3", {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}),
    # ISIC_2020_Training_GroundTruth.csv, column target.
    "isic2020_target": ("binary", {"0": "benign", "1": "malignant"}),
    # ISIC_2020_Training_GroundTruth.csv, column diagnosis, into HAM7. HAM's "bkl" groups solar
    # lentigines, seborrheic keratoses and lichen-planus-like keratoses, hence the four BKL rows.
    # "lentigo NOS" (a lentigo of unspecified type) joins the lentigines there: an approximation.
    # The others have no HAM class: "unknown" is the diagnosis of most ISIC 2020 images.
    "isic2020_diagnosis": (
        "ham7",
        {
            "melanoma": "MEL",
            "nevus": "NV",
            "seborrheic keratosis": "BKL",
            "lichenoid keratosis": "BKL",
            "solar lentigo": "BKL",
            "lentigo nos": "BKL",
            "cafe-au-lait macule": None,
            "atypical melanocytic proliferation": None,
            "scar": None,
            "unknown": None,
        },
    ),
    # MedMNIST DermaMNIST label indices. MedMNIST numbers HAM10000's dx codes in alphabetical
    # order (akiec, bcc, bkl, df, mel, nv, vasc), which is NOT the ISIC 2018 column order.
    "dermamnist": (
        "ham7",
        {"0": "AKIEC", "1": "BCC", "2": "BKL", "3": "DF", "4": "MEL", "5": "NV", "6": "VASC"},
    ),
}


def normalize_label(raw: object, source: str) -> str | None:
    """The canonical code of raw value ``raw`` of ``source`` (see ``SOURCE_ALIASES``).

    Returns ``None`` for values the source knows but no class represents. Integers and floats
    such as ``1`` or ``1.0`` are accepted for numeric sources. An unknown value is a DataError.
    """
    if source not in SOURCE_ALIASES:
        raise DataError(
            f"unknown label source '{source}'; known: {', '.join(sorted(SOURCE_ALIASES))}"
        )
    tax, table = SOURCE_ALIASES[source]
    key = str(raw).strip()
    if isinstance(raw, float) and raw.is_integer():
        key = str(int(raw))
    elif key.endswith(".0") and key[:-2].isdigit():
        key = key[:-2]
    if key in table:
        return table[key]
    folded = key.casefold()
    for k, v in table.items():
        if k.casefold() == folded:
            return v
    raise DataError(
        f"unknown label '{raw}' for {source} (taxonomy {tax}); expected one of: "
        f"{', '.join(table)}"
    )


# --- mappings between taxonomies ---------------------------------------------------------------

_ISIC2019_TO_HAM7: dict[str, str | None] = {
    "MEL": "MEL",
    "NV": "NV",
    "BCC": "BCC",
    # HAM10000's akiec covers actinic keratoses AND intraepithelial carcinoma (Bowen's disease);
    # ISIC 2019 split them into AK and SCC (the HAM akiec images are labelled SCC in ISIC 2019),
    # so both go back to AKIEC. Invasive SCCs from other sources land there too: an approximation.
    "AK": "AKIEC",
    "SCC": "AKIEC",
    "BKL": "BKL",
    "DF": "DF",
    "VASC": "VASC",
    "UNK": None,  # "none of the others": no HAM class
}

_HAM7_TO_ISIC2019: dict[str, str | None] = {
    "MEL": "MEL",
    "NV": "NV",
    "BCC": "BCC",
    "AKIEC": None,  # a mix of AK and SCC in situ: no single ISIC 2019 class
    "BKL": "BKL",
    "DF": "DF",
    "VASC": "VASC",
}

_PH2_TO_HAM7: dict[str, str | None] = {
    "common_nevus": "NV",
    "atypical_nevus": "NV",  # dysplastic nevi are nevi in HAM10000 (nv)
    "melanoma": "MEL",
}

_PH2_TO_ISIC2019: dict[str, str | None] = {
    "common_nevus": "NV",
    "atypical_nevus": "NV",
    "melanoma": "MEL",
}


def _to_binary(tax: Taxonomy) -> dict[str, str | None]:
    return {c: ("malignant" if c in tax.malignant else "benign") for c in tax.classes}


# (source taxonomy, destination taxonomy) -> {source class: destination class or None}.
# Identity mappings are implicit. Every table is complete over the source's classes (tested).
MAPPINGS: dict[tuple[str, str], dict[str, str | None]] = {
    ("isic2019_9", "ham7"): _ISIC2019_TO_HAM7,
    ("isic2019_8", "ham7"): {k: v for k, v in _ISIC2019_TO_HAM7.items() if k != "UNK"},
    ("isic2019_9", "isic2019_8"): {c: (None if c == "UNK" else c) for c in ISIC2019_9.classes},
    ("isic2019_8", "isic2019_9"): {c: c for c in ISIC2019_8.classes},
    ("ham7", "isic2019_8"): _HAM7_TO_ISIC2019,
    ("ham7", "isic2019_9"): _HAM7_TO_ISIC2019,
    ("ph2_3", "ham7"): _PH2_TO_HAM7,
    ("ph2_3", "isic2019_8"): _PH2_TO_ISIC2019,
    ("ph2_3", "isic2019_9"): _PH2_TO_ISIC2019,
    # Malignant: MEL, BCC, AKIEC / AK, SCC, melanoma (each taxonomy's ``malignant`` set).
    ("ham7", "binary"): _to_binary(HAM7),
    ("isic2019_8", "binary"): _to_binary(ISIC2019_8),
    ("ph2_3", "binary"): _to_binary(PH2_3),
    # UNK is none of the malignant classes, so it counts as benign by the rule above (it is not
    # verified benign: drop it first if that matters, e.g. map via isic2019_8).
    ("isic2019_9", "binary"): _to_binary(ISIC2019_9),
}


def map_label(label: str, src: str | Taxonomy, dst: str | Taxonomy) -> str | None:
    """Map class ``label`` of taxonomy ``src`` to taxonomy ``dst``.

    Returns the destination class, or ``None`` when the class has no counterpart in ``dst``.
    An unknown ``label`` or a pair of taxonomies without a mapping is a DataError.
    """
    s, d = get_taxonomy(src), get_taxonomy(dst)
    if label not in s.classes:
        raise DataError(
            f"unknown label '{label}' for taxonomy {s.name}; classes: {', '.join(s.classes)}"
        )
    if s.name == d.name:
        return label
    table = MAPPINGS.get((s.name, d.name))
    if table is None:
        known = ", ".join(sorted({b for a, b in MAPPINGS if a == s.name} | {s.name}))
        raise DataError(
            f"no label mapping from {s.name} to {d.name}; {s.name} maps to: {known}"
        )
    return table[label]


def is_malignant(label: str, taxonomy: str | Taxonomy) -> bool:
    """Whether class ``label`` of ``taxonomy`` counts as malignant."""
    t = get_taxonomy(taxonomy)
    if label not in t.classes:
        raise DataError(
            f"unknown label '{label}' for taxonomy {t.name}; classes: {', '.join(t.classes)}"
        )
    return label in t.malignant


# --- ISIC 2018 Task 3 submission columns -------------------------------------------------------

#: Column order of the ISIC 2018 Task 3 submission / ground-truth CSV (after ``image``).
ISIC2018_COLUMNS: tuple[str, ...] = HAM7.classes


def _taxonomy_of(classes: tuple[str, ...], taxonomy: str | None) -> Taxonomy:
    """The registered taxonomy with these classes (any order); DataError if none."""
    if taxonomy:
        t = get_taxonomy(taxonomy)
        if set(t.classes) == set(classes):
            return t
    for t in TAXONOMIES.values():
        if set(t.classes) == set(classes):
            return t
    raise DataError(
        f"classes {', '.join(classes)} are not a known taxonomy "
        f"({', '.join(sorted(TAXONOMIES))}): cannot map them to the ISIC 2018 columns"
    )


def isic2018_matrix(classes: list[str] | tuple[str, ...], taxonomy: str | None = None) -> np.ndarray:
    """(len(classes), 7) 0/1 matrix: ``probs @ M`` gives the ISIC 2018 Task 3 columns.

    ``classes`` in the artifact's output order; ``taxonomy`` (the card's) is a hint, the class
    set decides.

    Classes that the mapping merges (ISIC 2019 AK and SCC -> AKIEC) have their probabilities
    summed. The mapping must be complete both ways: every class of the artifact has an ISIC 2018
    column (UNK has none) and every column is fed by some class (PH2's three classes leave BCC,
    AKIEC, BKL, DF, VASC empty). Anything else is refused with one line rather than
    submitting columns of zeros or silently dropping probability mass.
    """
    classes = tuple(classes)
    src = _taxonomy_of(classes, taxonomy)
    m = np.zeros((len(classes), len(ISIC2018_COLUMNS)))
    try:
        dst = [map_label(c, src, HAM7) for c in classes]
    except DataError:
        raise DataError(f"taxonomy {src.name} has no mapping to the ISIC 2018 classes (ham7)") from None
    unmapped = [c for c, d in zip(classes, dst) if d is None]
    if unmapped:
        raise DataError(
            f"taxonomy {src.name}: class(es) {', '.join(unmapped)} have no ISIC 2018 column"
        )
    for i, d in enumerate(dst):
        m[i, ISIC2018_COLUMNS.index(d)] = 1.0  # type: ignore[arg-type]
    empty = [c for j, c in enumerate(ISIC2018_COLUMNS) if not m[:, j].any()]
    if empty:
        raise DataError(
            f"taxonomy {src.name} has no class for the ISIC 2018 column(s) {', '.join(empty)}"
        )
    return m
