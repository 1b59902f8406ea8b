"""ExecuTorch (.pte) through the same export driver, gate, runtime and bench as every format.

A tiny real run is exported with ``executorch`` and ``executorch-int8``; the gate judges them,
the runtime reads the card from the program, the bench measures them in a fresh process, and a
damaged program is a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")
pytest.importorskip("onnxruntime")

from edgederm.card import embed_card, load_card, read_embedded_card  # noqa: E402
from edgederm.data.images import load_image  # noqa: E402
from edgederm.errors import EdgedermError  # noqa: E402
from edgederm.export.context import ExportContext  # noqa: E402
from edgederm.export.run import export_run  # noqa: E402
from edgederm.formats.executorch.metadata import read_card_text, write_card_text  # noqa: E402
from edgederm.runtime import load  # noqa: E402
from test_gate import train_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("et")
    run = train_tiny_run(root)
    results = export_run(run, ["executorch", "executorch-int8"], out_dir=root / "export", n_boot=20)
    return run, root / "export", results


def _images(run: Path, n: int = 24) -> list:
    ctx = ExportContext.from_path(run)
    try:
        return [load_image(r.ref) for r in ctx.split("val").records[:n]]
    finally:
        ctx.close()


def test_fp32_program_is_gated_and_matches_pytorch(exported: tuple[Path, Path, list[dict]]) -> None:
    run, out, results = exported
    fp32 = next(r for r in results if r["target"] == "executorch")
    assert fp32["status"] == "pass", fp32
    path = Path(fp32["path"])
    assert path.suffix == ".pte" and path.exists()
    card = load_card(path)  # sha256 verified against the sidecar, embedded == sidecar on prediction fields
    assert card.artifact["format"] == "executorch"
    embedded = read_embedded_card(path)
    assert embedded is not None and embedded.metrics["gate"]["passed"] is True  # the card rewritten after the gate
    images = _images(run)
    got = load(path).predict_proba(images, tta=False)
    want = load(run / "model.pt").predict_proba(images, tta=False)
    assert np.abs(got - want).max() < 1e-4


def test_int8_program_runs_quantized_convolutions(exported: tuple[Path, Path, list[dict]]) -> None:
    run, _, results = exported
    r = next(r for r in results if r["target"] == "executorch-int8")
    assert r["status"] == "pass", r  # a tiny CNN: INT8 within the gate's allowances
    card = load_card(Path(r["path"]))
    info = card.artifact["exporter"]
    # Counted in the lowered program: every convolution/linear runs INT8 inside XNNPACK.
    assert info["int8_conv_linear"] > 0 and info["float_conv_linear"] == 0 and info["ops_outside_delegate"] == [], info
    assert info["calib_images"] > 0
    images = _images(run)
    got = load(Path(r["path"])).predict_proba(images, tta=False)
    want = load(run / "model.pt").predict_proba(images, tta=False)
    assert 0 < np.abs(got - want).max() < 0.3  # quantized: close, and not bit-identical to FP32


def test_card_rewrite_keeps_the_program_bit_identical(exported: tuple[Path, Path, list[dict]], tmp_path: Path) -> None:
    run, out, _ = exported
    src = out / "executorch" / "model.pte"
    copy = tmp_path / "m.pte"
    copy.write_bytes(src.read_bytes())
    card = load_card(src)
    spec = card.preprocessing
    x = np.random.default_rng(0).standard_normal((2, 3, spec.height, spec.width)).astype(np.float32)
    before = load(src).forward(x)
    card.name = "renamed ü"
    embed_card(copy, card)
    assert json.loads(read_card_text(copy))["name"] == "renamed ü"
    from edgederm.formats.executorch.runtime import ExecuTorchPredictor

    after = ExecuTorchPredictor(copy, card).forward(x)
    assert np.array_equal(before, after)


def test_damaged_programs_are_one_line_errors(exported: tuple[Path, Path, list[dict]], tmp_path: Path) -> None:
    _, out, _ = exported
    data = (out / "executorch" / "model.pte").read_bytes()
    for name, content in [("half.pte", data[: len(data) // 2]), ("garbage.pte", b"\0" * 100), ("tiny.pte", b"PK")]:
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(EdgedermError) as e:
            read_card_text(p)
        assert "not a readable ExecuTorch program" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EdgedermError, match="edgederm_card"):
        # a program without the card method cannot be given one
        from executorch.exir import to_edge

        m = torch.nn.Linear(3, 2).eval()
        prog = to_edge(torch.export.export(m, (torch.zeros(1, 3),))).to_executorch()
        bare = tmp_path / "bare.pte"
        bare.write_bytes(prog.buffer)
        assert read_card_text(bare) is None
        write_card_text(bare, "{}")


def test_bench_measures_the_program(exported: tuple[Path, Path, list[dict]], tmp_path: Path) -> None:
    from edgederm.bench.harness import run_bench
    from edgederm.bench.targets import Settings

    _, out, _ = exported
    res = run_bench([out / "executorch" / "model.pte"], "local", tmp_path / "bench",
                    Settings(threads=[1], batches=[1], warmup=2, runs=5, e2e_runs=0), torch_baseline=False, progress=False)
    [r] = [r for r in res if r.get("status") == "ok"]
    assert r["runtime"] == "executorch-xnnpack" and r["latency_ms"]["p50"] > 0
