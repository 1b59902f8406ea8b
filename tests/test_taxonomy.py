"""Tests of the label taxonomies, source aliases and mappings (edgederm.data.taxonomy)."""

from __future__ import annotations

import pytest

from edgederm.data.taxonomy import (
    BINARY,
    HAM7,
    ISIC2019_8,
    ISIC2019_9,
    MALIGNANT_HAM7,
    MAPPINGS,
    PH2_3,
    SOURCE_ALIASES,
    TAXONOMIES,
    Taxonomy,
    get_taxonomy,
    is_malignant,
    map_label,
    normalize_label,
)
from edgederm.errors import DataError

# --- class lists --------------------------------------------------------------------------------


def test_documented_class_orders() -> None:
    assert HAM7.classes == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    assert ISIC2019_8.classes == ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
    assert ISIC2019_9.classes == ISIC2019_8.classes + ("UNK",)
    assert PH2_3.classes == ("common_nevus", "atypical_nevus", "melanoma")
    assert BINARY.classes == ("benign", "malignant")
    assert MALIGNANT_HAM7 == ("MEL", "BCC", "AKIEC")
    assert set(MALIGNANT_HAM7) == HAM7.malignant


@pytest.mark.parametrize("name", sorted(TAXONOMIES))
def test_each_taxonomy_is_unique_and_registered_under_its_name(name: str) -> None:
    tax = TAXONOMIES[name]
    assert tax.name == name
    assert len(set(tax.classes)) == len(tax.classes)
    assert tax.malignant <= set(tax.classes)
    assert tax.description
    assert get_taxonomy(name) is tax
    assert get_taxonomy(name.upper()) is tax
    assert get_taxonomy(tax) is tax


def test_codes_are_uppercase_for_isic_taxonomies() -> None:
    for tax in (HAM7, ISIC2019_8, ISIC2019_9):
        assert all(c == c.upper() for c in tax.classes)


def test_taxonomy_rejects_duplicates_and_foreign_malignant_classes() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Taxonomy("x", ("A", "A"), frozenset())
    with pytest.raises(ValueError, match="malignant"):
        Taxonomy("x", ("A", "B"), frozenset({"C"}))


def test_taxonomy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        HAM7.name = "other"  # type: ignore[misc]


def test_unknown_taxonomy_lists_the_known_ones() -> None:
    with pytest.raises(DataError) as e:
        get_taxonomy("ham8")
    msg = str(e.value)
    assert "ham8" in msg and "\n" not in msg
    for name in TAXONOMIES:
        assert name in msg


def test_canonical_matches_case_insensitively() -> None:
    assert HAM7.canonical("mel") == "MEL"
    assert HAM7.canonical(" Akiec ") == "AKIEC"
    assert PH2_3.canonical("Melanoma") == "melanoma"
    assert HAM7.canonical("SCC") is None


# --- source aliases -----------------------------------------------------------------------------

HAM_DX = {
    "akiec": "AKIEC", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL", "nv": "NV", "vasc": "VASC",
}


@pytest.mark.parametrize("raw,code", sorted(HAM_DX.items()))
def test_ham10000_dx_aliases(raw: str, code: str) -> None:
    assert normalize_label(raw, "ham10000_dx") == code
    assert normalize_label(raw.upper(), "ham10000_dx") == code


def test_alias_tables_cover_exactly_these_values() -> None:
    assert SOURCE_ALIASES["ham10000_dx"][1] == HAM_DX
    assert set(SOURCE_ALIASES["isic2019_onehot"][1]) == set(ISIC2019_9.classes)
    assert set(SOURCE_ALIASES["isic2018_onehot"][1]) == set(HAM7.classes)


@pytest.mark.parametrize("source", sorted(SOURCE_ALIASES))
def test_alias_targets_are_classes_of_the_declared_taxonomy(source: str) -> None:
    tax_name, table = SOURCE_ALIASES[source]
    tax = get_taxonomy(tax_name)
    for code in table.values():
        assert code is None or code in tax.classes


def test_isic2019_onehot_columns() -> None:
    for c in ISIC2019_9.classes:
        assert normalize_label(c, "isic2019_onehot") == c


@pytest.mark.parametrize(
    "raw,code", [("0", "common_nevus"), ("1", "atypical_nevus"), ("2", "melanoma"), (2, "melanoma")]
)
def test_ph2_codes(raw: object, code: str) -> None:
    assert normalize_label(raw, "ph2") == code


@pytest.mark.parametrize("raw,code", [("0", "benign"), ("1", "malignant"), (1, "malignant"),
                                      (0.0, "benign"), ("1.0", "malignant")])
def test_isic2020_target(raw: object, code: str) -> None:
    assert normalize_label(raw, "isic2020_target") == code


@pytest.mark.parametrize(
    "raw,code",
    [
        ("melanoma", "MEL"),
        ("nevus", "NV"),
        ("seborrheic keratosis", "BKL"),
        ("lichenoid keratosis", "BKL"),
        ("solar lentigo", "BKL"),
        ("lentigo NOS", "BKL"),
        ("unknown", None),
        ("cafe-au-lait macule", None),
        ("atypical melanocytic proliferation", None),
        ("scar", None),
    ],
)
def test_isic2020_diagnosis(raw: str, code: str | None) -> None:
    assert normalize_label(raw, "isic2020_diagnosis") == code


def test_dermamnist_indices_follow_medmnist_alphabetical_order() -> None:
    # MedMNIST: 0 actinic keratoses/intraepithelial carcinoma, 1 basal cell carcinoma,
    # 2 benign keratosis-like, 3 dermatofibroma, 4 melanoma, 5 melanocytic nevi, 6 vascular
    expected = ["AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC"]
    assert [normalize_label(i, "dermamnist") for i in range(7)] == expected


def test_unknown_source_value_names_label_and_source() -> None:
    with pytest.raises(DataError) as e:
        normalize_label("melanomaa", "ham10000_dx")
    assert "melanomaa" in str(e.value) and "ham10000_dx" in str(e.value) and "ham7" in str(e.value)
    with pytest.raises(DataError, match="7"):
        normalize_label(7, "dermamnist")
    with pytest.raises(DataError, match="unknown label source"):
        normalize_label("mel", "ham10001")


# --- mappings between taxonomies ------------------------------------------------------------------

ISIC2019_TO_HAM7 = {
    "MEL": "MEL", "NV": "NV", "BCC": "BCC", "AK": "AKIEC", "BKL": "BKL",
    "DF": "DF", "VASC": "VASC", "SCC": "AKIEC", "UNK": None,
}
PH2_TO_HAM7 = {"common_nevus": "NV", "atypical_nevus": "NV", "melanoma": "MEL"}
MALIGNANT = {"MEL", "BCC", "AKIEC", "AK", "SCC", "melanoma"}


@pytest.mark.parametrize("src", ["isic2019_9", "isic2019_8"])
def test_isic2019_to_ham7_every_entry(src: str) -> None:
    for label in get_taxonomy(src).classes:
        assert map_label(label, src, "ham7") == ISIC2019_TO_HAM7[label]


@pytest.mark.parametrize("label,expected", sorted(PH2_TO_HAM7.items()))
def test_ph2_to_ham7_every_entry(label: str, expected: str) -> None:
    assert map_label(label, "ph2_3", "ham7") == expected


@pytest.mark.parametrize("label,expected", sorted(PH2_TO_HAM7.items()))
def test_ph2_to_isic2019(label: str, expected: str) -> None:
    assert map_label(label, "ph2_3", "isic2019_8") == expected


def test_ham7_to_isic2019_leaves_akiec_unmapped() -> None:
    for label in HAM7.classes:
        out = map_label(label, "ham7", "isic2019_8")
        assert out == (None if label == "AKIEC" else label)


def test_isic2019_9_to_8_drops_only_unk() -> None:
    for label in ISIC2019_9.classes:
        assert map_label(label, "isic2019_9", "isic2019_8") == (None if label == "UNK" else label)


@pytest.mark.parametrize("src", ["ham7", "isic2019_8", "isic2019_9", "ph2_3", "binary"])
def test_any_to_binary(src: str) -> None:
    for label in get_taxonomy(src).classes:
        expected = "malignant" if label in MALIGNANT | {"malignant"} else "benign"
        assert map_label(label, src, "binary") == expected
        assert is_malignant(label, src) == (expected == "malignant")


@pytest.mark.parametrize("pair", sorted(MAPPINGS))
def test_every_mapping_table_is_complete_and_lands_in_the_destination(pair: tuple[str, str]) -> None:
    src, dst = (get_taxonomy(n) for n in pair)
    table = MAPPINGS[pair]
    assert set(table) == set(src.classes), f"{pair} does not cover exactly the source classes"
    for label, out in table.items():
        assert out is None or out in dst.classes
        assert map_label(label, src, dst) == out


@pytest.mark.parametrize("name", sorted(TAXONOMIES))
def test_identity_mapping(name: str) -> None:
    for label in TAXONOMIES[name].classes:
        assert map_label(label, name, name) == label


def test_round_trips() -> None:
    # the classes shared by HAM7 and ISIC 2019 survive a round trip both ways
    for label in HAM7.classes:
        there = map_label(label, "ham7", "isic2019_9")
        if there is not None:
            assert map_label(there, "isic2019_9", "ham7") == label
    for label in ISIC2019_8.classes:
        assert map_label(map_label(label, "isic2019_8", "isic2019_9"), "isic2019_9", "isic2019_8") == label
    # malignancy is preserved by every non-None mapping
    for (s, d), table in MAPPINGS.items():
        if d == "binary":
            continue
        for label, out in table.items():
            if out is not None:
                assert is_malignant(label, s) == is_malignant(out, d), (s, d, label)


def test_unknown_label_names_label_and_taxonomy() -> None:
    with pytest.raises(DataError) as e:
        map_label("AKIEC", "isic2019_9", "ham7")
    msg = str(e.value)
    assert "AKIEC" in msg and "isic2019_9" in msg and "\n" not in msg
    with pytest.raises(DataError, match="mel"):
        map_label("mel", "ham7", "binary")  # codes are case-sensitive here: normalise first
    with pytest.raises(DataError, match="UNK"):
        is_malignant("UNK", "ham7")


def test_missing_mapping_is_an_error_not_a_guess() -> None:
    with pytest.raises(DataError, match="no label mapping from binary to ham7"):
        map_label("malignant", "binary", "ham7")
    with pytest.raises(DataError, match="no label mapping from ham7 to ph2_3"):
        map_label("NV", "ham7", "ph2_3")  # NV cannot be split into common/atypical


def test_unknown_taxonomy_in_map_label() -> None:
    with pytest.raises(DataError, match="unknown taxonomy"):
        map_label("MEL", "ham7", "isic2020")
