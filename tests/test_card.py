"""The artifact card: schema validation, round trips, class-list refusal, sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgederm.card import ArtifactCard, load_card, read_sidecar, sidecar_path, validate
from edgederm.errors import CardError, ClassMismatchError

from helpers import HAM7, tiny_card


def test_roundtrip_through_json() -> None:
    card = tiny_card()
    card.metrics = {"test": {"bacc": {"value": 0.8, "lo": 0.7, "hi": 0.9}}}
    again = ArtifactCard.from_json(card.to_json())
    assert again.to_dict() == card.to_dict()
    assert again.preprocessing == card.preprocessing


def test_provenance_is_filled() -> None:
    prov = tiny_card().provenance
    assert prov["edgederm"] and prov["created"] and "torch" in prov


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda d: d.pop("classes"), "classes"),
        (lambda d: d.__setitem__("classes", ["MEL", "MEL"]), "classes"),
        (lambda d: d["preprocessing"].__setitem__("layout", "CHWN"), "preprocessing/layout"),
        (lambda d: d["decision"].__setitem__("thresholds", {"MEL": 1.5}), "decision/thresholds/MEL"),
        (lambda d: d.__setitem__("schema", "other"), "schema"),
    ],
)
def test_invalid_cards_are_refused_with_the_location(mutate, where: str) -> None:  # noqa: ANN001
    d = tiny_card().to_dict()
    mutate(d)
    with pytest.raises(CardError) as e:
        ArtifactCard.from_dict(d)
    assert where.split("/")[0] in str(e.value) or "required" in str(e.value)
    assert "\n" not in str(e.value)


def test_newer_schema_is_refused() -> None:
    d = tiny_card().to_dict()
    d["schema_version"] = 99
    with pytest.raises(CardError, match="newer"):
        validate(d)


def test_class_mismatch_shows_both_lists() -> None:
    card = tiny_card()
    card.check_classes(HAM7)
    swapped = ["NV", "MEL", *HAM7[2:]]
    with pytest.raises(ClassMismatchError) as e:
        card.check_classes(swapped, what="data set 'x'")
    msg = str(e.value)
    assert str(HAM7) in msg and str(swapped) in msg


def test_sidecar_and_describe(tmp_path: Path) -> None:
    art = tmp_path / "m.bin"
    art.write_bytes(b"12345")
    card = tiny_card()
    card.describe_artifact(art, fmt="raw", precision="fp32")
    assert card.artifact["size_bytes"] == 5 and len(card.artifact["sha256"]) == 64
    side = card.write_sidecar(art)
    assert side == sidecar_path(art) and side.name == "m.bin.card.json"
    assert read_sidecar(art).to_dict() == card.to_dict()  # type: ignore[union-attr]
    assert load_card(side).name == "tiny"


def test_bad_json_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "x.card.json"
    p.write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(p)
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(CardError, match="JSON object"):
        load_card(p)
