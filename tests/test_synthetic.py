"""The embedded synthetic dermoscopy data set: layout, determinism, class balance, safety of
``overwrite``, lesion grouping, and that a tiny CNN can actually learn it."""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgederm.data import synthetic
from edgederm.data.synthetic import (
    CLASSES,
    DEFAULT_CLASS_WEIGHTS,
    IMAGE_DIR,
    METADATA_FILE,
    generate,
    render_lesion,
)
from edgederm.errors import DataError, EdgedermError

# The header of the real HAM10000_metadata.csv (checked against the real file below when present).
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / METADATA_FILE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "set", n_lesions=60, size=48, seed=3)


# --------------------------------------------------------------------------------------------
# Layout and metadata
# --------------------------------------------------------------------------------------------


def test_layout_and_columns(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == sorted(
        [METADATA_FILE, IMAGE_DIR, synthetic.MARKER_FILE]
    )
    with open(small_set / METADATA_FILE, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == HAM_COLUMNS
    rows = _rows(small_set)
    files = sorted(p.name for p in (small_set / IMAGE_DIR).iterdir())
    assert files == sorted(f"{r['image_id']}.jpg" for r in rows)
    assert len({r["image_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["dx"] in CLASSES
        assert r["dataset"] == "synthetic"
        assert r["image_id"].startswith("SYN_") and len(r["image_id"]) == 11
        assert r["lesion_id"].startswith("SYNL_")
        assert r["dx_type"] in {"histo", "follow_up", "consensus", "confocal"}
        assert r["sex"] in {"male", "female"}
        assert 0.0 <= float(r["age"]) <= 85.0 and float(r["age"]) % 5 == 0
        assert r["localization"]
    # A lesion has one diagnosis and one set of patient metadata across its images.
    by_lesion: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for r in rows:
        by_lesion[r["lesion_id"]].add((r["dx"], r["dx_type"], r["age"], r["sex"], r["localization"]))
    assert len(by_lesion) == 60
    assert all(len(v) == 1 for v in by_lesion.values())


def test_columns_match_the_real_ham10000_metadata(data_root: Path) -> None:
    from conftest import real_data_set

    real = real_data_set(data_root, "ham10000") / METADATA_FILE
    with open(real, newline="", encoding="utf-8") as f:
        real_header = next(csv.reader(f))
    assert real_header == HAM_COLUMNS == list(synthetic.METADATA_COLUMNS)
    real_dx = {r["dx"] for r in csv.DictReader(open(real, newline="", encoding="utf-8"))}
    assert real_dx == set(CLASSES)


def test_images_decode_with_the_right_size(small_set: Path) -> None:
    for p in sorted((small_set / IMAGE_DIR).iterdir()):
        with Image.open(p) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == (48, 48)
            arr = np.asarray(im)
        # Not blank: real content with contrast.
        assert arr.std() > 5


def test_several_images_per_lesion(small_set: Path, tmp_path: Path) -> None:
    per_lesion = Counter(r["lesion_id"] for r in _rows(small_set))
    assert set(per_lesion.values()) <= {1, 2, 3}
    assert sum(n > 1 for n in per_lesion.values()) >= len(per_lesion) // 3
    out = generate(tmp_path / "s", n_lesions=8, images_per_lesion=(2, 2), size=32, seed=0)
    assert set(Counter(r["lesion_id"] for r in _rows(out)).values()) == {2}


def test_class_weights_are_followed(tmp_path: Path) -> None:
    # Exact largest-remainder allocation: 100 lesions follow the default weights to the lesion.
    assert synthetic._class_counts(100, DEFAULT_CLASS_WEIGHTS) == {
        c: round(100 * w) for c, w in DEFAULT_CLASS_WEIGHTS.items()
    }
    assert abs(sum(DEFAULT_CLASS_WEIGHTS.values()) - 1.0) < 1e-9
    assert set(DEFAULT_CLASS_WEIGHTS) == set(CLASSES)
    # Imbalanced (so balanced sampling matters) but every class well represented.
    assert max(DEFAULT_CLASS_WEIGHTS.values()) / min(DEFAULT_CLASS_WEIGHTS.values()) >= 4
    assert min(DEFAULT_CLASS_WEIGHTS.values()) >= 0.05

    out = generate(tmp_path / "w", n_lesions=40, size=32, seed=1, images_per_lesion=(1, 1),
                   class_weights={"nv": 3, "mel": 1})
    lesions = {r["lesion_id"]: r["dx"] for r in _rows(out)}
    assert Counter(lesions.values()) == {"nv": 30, "mel": 10}
    # Every class with a positive weight gets a lesion even when its share rounds to zero.
    counts = synthetic._class_counts(7, {"nv": 100, "df": 1, "vasc": 1, "mel": 1, "bcc": 1,
                                         "bkl": 1, "akiec": 1})
    assert all(n >= 1 for n in counts.values()) and sum(counts.values()) == 7


def test_default_set_class_shares(small_set: Path) -> None:
    lesions = {r["lesion_id"]: r["dx"] for r in _rows(small_set)}
    counts = Counter(lesions.values())
    assert set(counts) == set(CLASSES)
    for c, w in DEFAULT_CLASS_WEIGHTS.items():
        assert abs(counts[c] - 60 * w) <= 1, (c, counts[c])


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    kw = dict(n_lesions=14, size=40, seed=11)
    a = _tree_digest(generate(tmp_path / "a", **kw))
    b = _tree_digest(generate(tmp_path / "b", **kw))
    assert a == b
    assert len(a) > 14
    c = _tree_digest(generate(tmp_path / "c", **{**kw, "seed": 12}))
    assert a.keys() & c.keys()
    assert all(a[k] != c[k] for k in a.keys() & c.keys() if k.endswith(".jpg"))
    assert a[METADATA_FILE] != c[METADATA_FILE]


def test_render_lesion(tmp_path: Path) -> None:
    for dx in CLASSES:
        img = render_lesion(dx, np.random.default_rng(5), 40)
        assert img.dtype == np.uint8 and img.shape == (40, 40, 3)
        again = render_lesion(dx, np.random.default_rng(5), 40)
        assert np.array_equal(img, again)
    assert not np.array_equal(render_lesion("nv", np.random.default_rng(1), 40),
                              render_lesion("nv", np.random.default_rng(2), 40))
    with pytest.raises(EdgedermError, match="unknown class 'scc'"):
        render_lesion("scc", np.random.default_rng(0), 40)


# --------------------------------------------------------------------------------------------
# Safety of the output folder
# --------------------------------------------------------------------------------------------


def test_refuses_to_clobber_a_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(DataError) as err:
            generate(target, n_lesions=7, size=32, overwrite=overwrite)
        assert "\n" not in str(err.value)
        assert str(target) in str(err.value)
    # Untouched, and no temporary folder left behind.
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_replaces_a_previous_synthetic_set(tmp_path: Path) -> None:
    target = tmp_path / "set"
    target.mkdir()  # an empty folder is fine without overwrite
    generate(target, n_lesions=7, size=32, seed=0)
    first = _tree_digest(target)
    with pytest.raises(DataError, match="overwrite=True"):
        generate(target, n_lesions=7, size=32, seed=1)
    assert _tree_digest(target) == first
    generate(target, n_lesions=9, size=32, seed=1, overwrite=True)
    assert len({r["lesion_id"] for r in _rows(target)}) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    # Readable like any folder the user creates, not private like a temporary folder.
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o777 & ~umask


def test_interrupted_run_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synthetic._make_lesion
    calls = {"n": 0}

    def dies_midway(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_make_lesion", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "set", n_lesions=10, size=32)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    for kwargs, match in [
        ({"n_lesions": 0}, "n_lesions"),
        ({"images_per_lesion": (2, 1)}, "images_per_lesion"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"class_weights": {"nv": 1, "scc": 1}}, "scc"),
        ({"class_weights": {"nv": 0}}, "class_weights"),
    ]:
        with pytest.raises(EdgedermError, match=match) as err:
            generate(tmp_path / "x", **kwargs)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# The images carry the signal: lesion grouping and class learnability
# --------------------------------------------------------------------------------------------


def _load(root: Path, rows: list[dict[str, str]]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / IMAGE_DIR / f"{r['image_id']}.jpg")) for r in rows])


def test_images_of_a_lesion_look_alike(tmp_path: Path) -> None:
    """Views of one lesion must be closer to each other than to other lesions of the same class,
    or lesion-grouped splitting would be pointless. Feature: a coarse colour histogram, which is
    rotation invariant and ignores the pose differences between views."""
    out = generate(tmp_path / "g", n_lesions=28, images_per_lesion=(2, 2), size=48, seed=4,
                   class_weights={c: 1.0 for c in CLASSES})
    rows = _rows(out)
    x = _load(out, rows).reshape(len(rows), -1, 3) // 64  # 4 bins per channel
    codes = x[..., 0] * 16 + x[..., 1] * 4 + x[..., 2]
    hist = np.stack([np.bincount(c, minlength=64) for c in codes]).astype(float)
    hist /= hist.sum(1, keepdims=True)
    same, other = [], []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if rows[i]["dx"] != rows[j]["dx"]:
                continue
            d = np.abs(hist[i] - hist[j]).sum()
            (same if rows[i]["lesion_id"] == rows[j]["lesion_id"] else other).append(d)
    assert len(same) == 28 and len(other) > 28
    # Measured ratio 0.23-0.34 over seeds 4-8; views drawn independently would give ~1.
    assert np.median(same) < 0.6 * np.median(other)


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in range(k) if np.any(y == c)]))


def _tiny_cnn_bacc(root: Path, epochs: int = 35, shuffle_labels: bool = False) -> float:
    """Train a 3-block CNN on 2/3 of the lesions of a generated set, return the balanced accuracy
    on the images of the other third (lesion-disjoint). Seeded, 1 CPU thread."""
    import torch
    from torch import nn

    rows = _rows(root)
    x = torch.from_numpy(_load(root, rows)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    labels = {r["lesion_id"]: CLASSES.index(r["dx"]) for r in rows}
    if shuffle_labels:  # the negative control: labels no longer follow the images
        ids = sorted(labels)
        perm = np.random.default_rng(0).permutation(len(ids))
        labels = {i: labels[ids[p]] for i, p in zip(ids, perm)}
    y = torch.tensor([labels[r["lesion_id"]] for r in rows])
    # Lesion-disjoint split: every 3rd lesion is held out with all of its images.
    test = torch.tensor([int(r["lesion_id"].split("_")[1]) % 3 == 0 for r in rows])
    xtr, ytr, xte, yte = x[~test], y[~test], x[test], y[test]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fastest at this size, and immune to CPU oversubscription
    try:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.MaxPool2d(2))

        model = nn.Sequential(block(3, 16), block(16, 32), block(32, 48), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(48, len(CLASSES)))
        # Class-balanced sampling: the set is imbalanced on purpose.
        weights = (1.0 / torch.bincount(ytr, minlength=len(CLASSES)).clamp(min=1).float())[ytr]
        bs = 32
        steps = len(xtr) // bs
        opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * steps)
        model.train()
        for _ in range(epochs):
            idx = torch.multinomial(weights, steps * bs, replacement=True, generator=gen)
            for b in range(steps):
                bi = idx[b * bs:(b + 1) * bs]
                xb = xtr[bi]
                if torch.rand(1, generator=gen).item() < 0.5:
                    xb = xb.flip(3)
                loss = nn.functional.cross_entropy(model(xb), ytr[bi])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            pred = model(xte).argmax(1)
    finally:
        torch.set_num_threads(threads)
    return _balanced_accuracy(yte.numpy(), pred.numpy(), len(CLASSES))


def test_learnable_by_a_tiny_cnn(tmp_path: Path) -> None:
    """A 3-block CNN trained for ~20 s on 1 CPU thread must beat chance by far on
    lesion-disjoint held-out images.

    Why 0.40 tells a working generator from a broken one: with 7 classes chance balanced accuracy
    is 1/7 = 0.14. If the images did not depend on the class (or the labels did not follow the
    images), held-out BACC is chance plus noise: shuffling the lesion labels of this very setup
    (``_tiny_cnn_bacc(..., shuffle_labels=True)``) measured 0.12, 0.17, 0.13, 0.18 for generator
    seeds 0-3, and with ~200 held-out images the noise is about 0.05, so 0.40 is 4+ standard
    deviations above chance. The real generator measured 0.70, 0.62, 0.64, 0.66 for seeds 0-3
    (here seed 0; set, split and training are all seeded, so the run is reproducible). A larger
    budget (700 lesions, 4-block CNN, ~1 min) reaches ~0.9, with melanoma vs nevus the main
    confusion.
    """
    out = generate(tmp_path / "l", n_lesions=420, images_per_lesion=(1, 2), size=64, seed=0)
    bacc = _tiny_cnn_bacc(out, epochs=35)
    assert bacc >= 0.40, f"held-out balanced accuracy {bacc:.3f}"
