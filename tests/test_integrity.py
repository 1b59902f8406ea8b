"""Artifact integrity and one-line errors, on real files.

A tiny small_cnn is exported to ONNX (and to TFLite / OpenVINO IR where installed) and finished
the way the export driver does (``export.run._finalize_card``): embed the card, hash the file,
write the sidecar with ``artifact.sha256``. Then the files are damaged the ways they get damaged
in practice (a byte appended, a card re-embedded, a truncated copy, a hand-edited card) and
every refusal must be a one-line ``EdgedermError`` with exit code 2. The CLI's usage errors are
checked through the real console entry point.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgederm.card import (
    ArtifactCard,
    card_problems,
    check_consistency,
    load_card,
    read_sidecar,
    sidecar_path,
)
from edgederm.checkpoint import load_checkpoint
from edgederm.errors import CardError, EdgedermError, IntegrityError
from edgederm.fsutil import sha256_file, write_json_atomic
from edgederm.runtime import load
from edgederm.runtime.registry import BACKENDS

from helpers import HAM7, rgb_images, run_cli, tiny_card, tiny_checkpoint

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'edgederm[onnx]'")

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def finish(path: Path, card: ArtifactCard, fmt: str) -> ArtifactCard:
    """What ``export.run._finalize_card`` does: embed, then hash the file, then the sidecar."""
    card = card.copy()
    card.artifact = {**card.artifact, "format": fmt, "precision": "fp32"}
    BACKENDS[fmt].embed_card(path, card)  # type: ignore[misc]
    card.write_sidecar(path)
    card.describe_artifact(path, fmt=fmt, precision="fp32")
    card.write_sidecar(path)
    return card


def one_line(e: pytest.ExceptionInfo[EdgedermError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2, msg
    return msg



@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, ArtifactCard]:
    torch.set_num_threads(1)
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("integrity") / "m.pt", size=SIZE)
    members, card = load_checkpoint(ckpt)
    return ckpt, members[0].build(), card


@pytest.fixture(scope="module")
def onnx_master(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ONNX artifact + sidecar; tests work on copies (``onnx_art``)."""
    _, model, card = tiny
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    finish(path, card, "onnx")
    return path


@pytest.fixture
def onnx_art(onnx_master: Path, tmp_path: Path) -> Path:
    path = tmp_path / onnx_master.name
    shutil.copy(onnx_master, path)
    shutil.copy(sidecar_path(onnx_master), sidecar_path(path))
    return path


# -- SHA-256 -------------------------------------------------------------------------------------
def test_faithful_artifact_loads(onnx_art: Path, tiny, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, _, _ = tiny
    side = read_sidecar(onnx_art)
    assert side is not None and side.artifact["sha256"] == sha256_file(onnx_art)
    imgs = rgb_images(4)
    np.testing.assert_allclose(load(onnx_art, threads=1).predict_proba(imgs), load(ckpt).predict_proba(imgs), atol=1e-5)
    assert load_card(onnx_art).classes == HAM7
    code, out, err = run_cli(capsys, "card", "validate", onnx_art)
    assert code == 0 and out.startswith("ok: tiny"), err


def test_appended_byte_is_refused(onnx_art: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open(onnx_art, "ab") as f:
        f.write(b"\0")
    with pytest.raises(IntegrityError) as e:
        load(onnx_art)
    msg = one_line(e)
    assert str(onnx_art) in msg and "modified after export" in msg and "SHA-256" in msg
    assert sha256_file(onnx_art)[:12] in msg and read_sidecar(onnx_art).artifact["sha256"][:12] in msg  # type: ignore[union-attr]
    with pytest.raises(IntegrityError):
        load_card(onnx_art)  # `card show` / `card validate` go through here
    code, _, err = run_cli(capsys, "card", "validate", onnx_art)
    assert code == 2 and err.count("error:") == 1 and "modified after export" in err


def test_reembedded_card_is_refused(onnx_art: Path) -> None:
    """The embedded card edited after export (two classes swapped) while the sidecar is old."""
    from edgederm.card import embed_card, read_embedded_card

    edited = read_embedded_card(onnx_art)
    assert edited is not None
    edited.classes = ["NV", "MEL", *HAM7[2:]]
    embed_card(onnx_art, edited)
    with pytest.raises(IntegrityError) as e:  # the file changed: the hash catches it first
        load(onnx_art)
    one_line(e)
    # The sidecar's hash brought up to date, its card fields left as exported: the disagreement
    # alone refuses (either card would run the model with another class order).
    side = json.loads(sidecar_path(onnx_art).read_text())
    side["artifact"]["sha256"] = sha256_file(onnx_art)
    write_json_atomic(sidecar_path(onnx_art), side)
    for call in (load, load_card):
        with pytest.raises(CardError) as e:
            call(onnx_art)
        msg = one_line(e)
        assert "disagree on classes/0" in msg and sidecar_path(onnx_art).name in msg


def test_sidecar_may_differ_in_metrics_and_provenance(onnx_art: Path) -> None:
    """The sidecar is written after hashing and may gain metrics: only prediction fields count."""
    side = json.loads(sidecar_path(onnx_art).read_text())
    side["metrics"] = {"test": {"bacc": {"value": 0.5}}}
    side["provenance"]["note"] = "re-measured"
    side["history"].append({"event": "evaluate"})
    side["name"] = "renamed"
    write_json_atomic(sidecar_path(onnx_art), side)
    assert load(onnx_art).classes == HAM7
    side["decision"] = {"rule": "priority_thresholds", "thresholds": {"MEL": 0.3}, "priority": ["MEL"]}
    write_json_atomic(sidecar_path(onnx_art), side)
    with pytest.raises(CardError, match="disagree on decision/rule"):
        load(onnx_art)


def test_copy_renamed_with_its_sidecar_still_verifies(onnx_art: Path) -> None:
    copy = onnx_art.with_name("melanoma.onnx")
    shutil.copy(onnx_art, copy)
    shutil.copy(sidecar_path(onnx_art), sidecar_path(copy))
    assert read_sidecar(copy).artifact["file"] == "model.onnx"  # type: ignore[union-attr]
    assert load(copy).classes == HAM7
    with open(copy, "ab") as f:
        f.write(b"x")
    with pytest.raises(IntegrityError) as e:
        load(copy)
    assert "recorded for model.onnx" in one_line(e)


def test_no_recorded_hash_means_no_check(onnx_art: Path) -> None:
    """A sidecar without ``artifact.sha256`` (like the one the export writes before hashing, which
    the gate loads) verifies nothing; the cards must still agree."""
    from edgederm.card import embed_card, read_embedded_card

    side = json.loads(sidecar_path(onnx_art).read_text())
    del side["artifact"]["sha256"]
    write_json_atomic(sidecar_path(onnx_art), side)
    card = read_embedded_card(onnx_art)
    assert card is not None
    card.name = "renamed"  # the file changes, no prediction field does
    embed_card(onnx_art, card)
    assert load(onnx_art).card.name == "renamed"


def test_companion_files_are_verified(tiny, onnx_master: Path, tmp_path: Path) -> None:
    """OpenVINO IR: ``artifact.files`` records .xml and .bin; a changed .bin is named."""
    if not BACKENDS["openvino"].available():
        pytest.skip("openvino is not installed: pip install 'edgederm[openvino]'")
    import openvino as ov

    _, _, card = tiny
    xml = tmp_path / "model.xml"
    ov.save_model(ov.convert_model(str(onnx_master)), str(xml), compress_to_fp16=False)
    c = finish(xml, card, "openvino")
    c.artifact["files"] = {p.name: sha256_file(p) for p in (xml, xml.with_suffix(".bin"))}  # as _finalize_card
    c.write_sidecar(xml)
    assert load(xml).classes == HAM7
    # Copied under another stem with its sidecar: the companion is found as ir.bin.
    ir = tmp_path / "ir.xml"
    shutil.copy(xml, ir)
    shutil.copy(xml.with_suffix(".bin"), ir.with_suffix(".bin"))
    shutil.copy(sidecar_path(xml), sidecar_path(ir))
    assert load(ir).classes == HAM7
    blob = bytearray(ir.with_suffix(".bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one weight flipped: same size, the IR still parses
    ir.with_suffix(".bin").write_bytes(bytes(blob))
    with pytest.raises(IntegrityError) as e:
        load(ir)
    assert one_line(e).startswith(f"{ir.with_suffix('.bin')}: modified after export")


# -- corrupt files (no sidecar: the format-level check) -----------------------------------------
def test_truncated_onnx_is_one_line(onnx_art: Path) -> None:
    data = onnx_art.read_bytes()
    onnx_art.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError):  # with its sidecar, the hash fires first
        load(onnx_art)
    sidecar_path(onnx_art).unlink()
    for call in (load, load_card):
        with pytest.raises(EdgedermError) as e:
            call(onnx_art)
        msg = one_line(e)
        assert msg.startswith(f"{onnx_art}: not a readable ONNX file (") and "Traceback" not in msg


def test_onnx_runtime_refusal_is_one_line(tmp_path: Path) -> None:
    """A well-formed protobuf ONNX Runtime cannot load (unknown operator): one line, not a trace."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["input"], ["logits"], domain="")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 7])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    BACKENDS["onnx"].embed_card(path, tiny_card(size=SIZE))  # type: ignore[misc]
    assert load_card(path).name == "tiny"
    with pytest.raises(EdgedermError) as e:
        load(path)
    assert one_line(e).startswith(f"{path}: not a readable ONNX file (")


@pytest.fixture(scope="module")
def tflite_master(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed: pip install 'edgederm[tflite]'")
    pytest.importorskip("litert_torch", reason="litert-torch is not installed: pip install 'edgederm[tflite]'")
    from edgederm.formats.tflite.export import export_tflite

    _, model, card = tiny
    path = tmp_path_factory.mktemp("tflite") / "model.tflite"
    export_tflite(model, torch.zeros(1, 3, SIZE, SIZE), path)
    finish(path, card, "tflite")
    return path


def test_truncated_tflite_is_one_line(tflite_master: Path, tmp_path: Path) -> None:
    path = tmp_path / tflite_master.name
    shutil.copy(tflite_master, path)
    shutil.copy(sidecar_path(tflite_master), sidecar_path(path))
    assert load(path).classes == HAM7
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError):
        load(path)
    sidecar_path(path).unlink()
    for call in (load, load_card):
        with pytest.raises(EdgedermError) as e:
            call(path)
        assert one_line(e).startswith(f"{path}: not a readable TFLite file (")


def test_tflite_stripped_of_its_card_falls_back_to_the_sidecar(tflite_master: Path, tmp_path: Path) -> None:
    """Re-serialised without the edgederm metadata: the sidecar is used, but its hash no longer fits."""
    from ai_edge_litert.tools import flatbuffer_utils

    path = tmp_path / tflite_master.name
    shutil.copy(sidecar_path(tflite_master), sidecar_path(path))
    model = flatbuffer_utils.read_model(str(tflite_master))
    model.metadata = [m for m in model.metadata or [] if m.name not in (b"edgederm.card", "edgederm.card")]
    flatbuffer_utils.write_model(model, str(path))
    with pytest.raises(IntegrityError) as e:
        load(path)
    one_line(e)


# -- cross-field checks --------------------------------------------------------------------------
def _card_file(tmp_path: Path, mutate) -> Path:  # noqa: ANN001
    d = tiny_card(size=SIZE).to_dict()
    d["decision"] = {"rule": "priority_thresholds", "thresholds": {"MEL": 0.3, "BCC": 0.4}, "priority": ["MEL", "BCC"]}
    mutate(d)
    p = tmp_path / "c.card.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d["decision"]["thresholds"].__setitem__("MEL", 1.5), ["decision/thresholds/MEL"]),
        (lambda d: d["decision"]["thresholds"].__setitem__("MELANOMA", 0.2), ["decision/thresholds/MELANOMA", "not one of the classes"]),
        (lambda d: d["preprocessing"].__setitem__("std", [0.2, 0.0, 0.2]), ["preprocessing/std"]),
        (lambda d: d["decision"]["priority"].append("SCC"), ["decision/priority/2", "'SCC'"]),
        (lambda d: d["tta"].__setitem__("views", ["identity", "rot45"]), ["tta/views", "rot45"]),
        (lambda d: d["decision"]["thresholds"].__setitem__("MEL", 0.0), ["decision/thresholds/MEL", "(0, 1)"]),
    ],
)
def test_card_validate_lists_problems(mutate, expect: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    code, out, err = run_cli(capsys, "card", "validate", _card_file(tmp_path, mutate))
    assert code == 2 and not out and "Traceback" not in err
    problems = [ln for ln in err.splitlines() if not ln.startswith("error:")]
    assert len(problems) == 1, err  # one problem, reported once (schema and cross-field checks overlap)
    assert all(s in problems[0] for s in expect), err
    assert err.splitlines()[-1].startswith("error:") and "invalid card (1 problem)" in err


def test_card_validate_reports_all_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def mutate(d: dict) -> None:
        d["decision"]["thresholds"].update(MEL=1.5, XYZ=0.2)
        d["preprocessing"]["std"] = [0.0, 0.2, 0.2]

    code, _, err = run_cli(capsys, "card", "validate", _card_file(tmp_path, mutate))
    assert code == 2
    for where in ("decision/thresholds/MEL", "decision/thresholds/XYZ", "preprocessing/std"):
        assert where in err, err
    assert "3 problems" in err.splitlines()[-1]


def test_consistency_accepts_legal_but_unusual_values() -> None:
    d = tiny_card().to_dict()
    d["decision"] = {"rule": "priority_thresholds", "thresholds": {"MEL": 0.0001, "NV": 0.9999}, "priority": ["MEL", "NV"]}
    d["tta"] = {"views": ["identity", "hflip", "zoom80"]}
    d["preprocessing"]["channel_order"] = "BGR"
    d["preprocessing"]["layout"] = "NHWC"
    assert check_consistency(d) == [] and card_problems(d) == []
    d["decision"]["thresholds"]["MEL"] = float("nan")  # json.loads accepts NaN; the schema's minimum does not catch it
    assert any("decision/thresholds/MEL" in p for p in card_problems(d))
    d["decision"]["thresholds"]["MEL"] = 0.3
    d["decision"]["priority"] = ["NV"]
    assert check_consistency(d) == ["decision/thresholds/MEL: not in decision/priority, so it is never applied"]


def _embedded_only(onnx_master: Path, tmp_path: Path, decision: dict) -> Path:
    path = tmp_path / "d.onnx"
    shutil.copy(onnx_master, path)
    card = tiny_card(size=SIZE)
    card.decision = decision
    BACKENDS["onnx"].embed_card(path, card)  # type: ignore[misc]
    return path


def test_runtime_refuses_a_decision_it_cannot_follow(onnx_master: Path, tmp_path: Path) -> None:
    for decision, expect in (
        ({"rule": "priority_thresholds", "thresholds": {"MELANOMA": 0.3}, "priority": ["MELANOMA"]}, "not one of the classes"),
        ({"rule": "priority_thresholds", "thresholds": {"MEL": 0.0}}, "not a number in (0, 1)"),
        ({"rule": "priority_thresholds", "thresholds": {"MEL": 1.0}}, "not a number in (0, 1)"),
    ):
        path = _embedded_only(onnx_master, tmp_path, decision)
        with pytest.raises(CardError) as e:
            load(path)
        assert expect in one_line(e)
        assert load_card(path).decision == decision  # `card show` still shows it
    # Legal but unusual: a threshold of 0.0001 fires on nearly every image, by design.
    path = _embedded_only(onnx_master, tmp_path, {"rule": "priority_thresholds", "thresholds": {"MEL": 0.0001}})
    pred = load(path)
    assert (pred.predict(rgb_images(3))[1] == HAM7.index("MEL")).all()


# -- CLI usage errors ----------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgederm", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(
    "args, expect",
    [
        (["gate"], "Missing argument 'artifact'. (see edgederm gate --help)"),  # MissingParameter
        (["export", "--bogus"], "No such option: --bogus"),  # NoSuchOption
        (["predict", "--threads", "abc", "x.onnx", "y.png"], "Invalid value for '--threads'"),  # BadParameter
        (["bench", "--threads", "abc", "x"], "'abc'"),  # the bench's own parser: an EdgedermError
    ],
)
def test_usage_errors_are_one_line(args: list[str], expect: str) -> None:
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], r.stderr


def test_help_still_exits_0() -> None:
    r = _cli("gate", "--help")
    assert r.returncode == 0 and "Usage" in r.stdout and not r.stderr.strip()
