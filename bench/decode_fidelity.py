"""How far reduced-scale decoding moves model inputs and decisions, on real dermoscopy images.

For each image, three decodes go through the same preprocessing spec and the same model:

* **exact**: every pixel (``load_image(ref)``, what ``exact_decode`` gives);
* **JPEG draft**: ``Predictor.load_image`` on the JPEG (libjpeg's 1/2-1/8 scale, then any integer
  box reduce), the default path;
* **PNG reduce**: the exact pixels saved as a lossless PNG, then ``Predictor.load_image`` (the
  integer box reduce every non-JPEG format takes).

The shared data's images have a short side of at most 256 px, so the rule is exercised with a
32-px model (decode_size 74: the same 2x ratio between decoded and resized sizes that a 224-px
model has for a >= 512-px photo). Reported: the largest and mean absolute difference of the
resized 8-bit pixels and of the normalised float input, and how many decisions (the card's rule)
differ from the exact decode's, for a small CNN trained here for a few epochs on another data set
(weak, so its decisions sit close to the boundaries and flip more easily than a good model's).

    python bench/decode_fidelity.py --train ../shared/data/ham10000 --data ../shared/data/isic2020/train --n 300
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def trained_model(path: Path, size: int, train_data: Path, epochs: int) -> Path:
    """A small CNN trained for a few epochs on ``train_data`` (exact decodes, no augmentation):
    not a good classifier, but one whose decisions depend on the pixels, unlike a random one."""
    from edgederm.card import ArtifactCard
    from edgederm.checkpoint import member_from_model, save_checkpoint
    from edgederm.data.readers import read_dataset
    from edgederm.data.torchdata import ImageDataset
    from edgederm.models import create_model
    from edgederm.preprocess import PreprocessSpec

    index = read_dataset(train_data, "auto")
    spec = PreprocessSpec(input_size=(size, size))
    ds = ImageDataset(index, spec.with_(exact_decode=True), cache=True)
    torch.manual_seed(0)
    model = create_model("small_cnn", len(index.classes), width=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    counts = np.bincount(index.targets(), minlength=len(index.classes))
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(len(counts) / np.maximum(counts, 1) / len(counts), dtype=torch.float32))
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    card = ArtifactCard(name="decode-fidelity", classes=list(index.classes), taxonomy=index.taxonomy or "",
                        preprocessing=spec,
                        model={"kind": "single", "combine": "weighted_mean", "output": "logits",
                               "members": [{"name": "small_cnn", "weight": 1.0}]})
    return save_checkpoint(path, [member_from_model("small_cnn", model.eval(), len(index.classes), width=16)], card)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a folder of JPEGs")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=32, help="model input side")
    ap.add_argument("--train", type=Path, required=True, help="a labelled data set for the model (e.g. ham10000)")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()

    from PIL import Image

    from edgederm.data.images import load_image
    from edgederm.runtime import load

    files = sorted(args.data.glob("*.jpg"))[: args.n]
    with tempfile.TemporaryDirectory(prefix="decode-fidelity-") as tmp:
        pred = load(trained_model(Path(tmp) / "model.pt", args.size, args.train, args.epochs))
        spec = pred.card.preprocessing
        decoded: dict[str, list[Image.Image]] = {"exact": [], "JPEG draft": [], "PNG reduce": []}
        for i, f in enumerate(files):
            exact = load_image(f)
            png = Path(tmp) / f"{i}.png"
            exact.save(png, compress_level=1)
            decoded["exact"].append(exact)
            decoded["JPEG draft"].append(pred.load_image(f))
            decoded["PNG reduce"].append(pred.load_image(png))
        sizes = [min(im.size) for im in decoded["exact"]]
        print(f"{len(files)} images from {args.data.name}, short side {min(sizes)}-{max(sizes)} px; "
              f"spec {spec.height}x{spec.width} {spec.resize} crop_pct {spec.crop_pct} {spec.interpolation}; "
              f"decode_size {pred.decode_size}\n")
        ref_x = np.stack([spec.to_float_hwc(im) for im in decoded["exact"]])
        ref_u8 = np.stack([np.asarray(spec.geometric(im), np.int16) for im in decoded["exact"]])
        ref_p = pred.predict_proba(decoded["exact"], tta=False)
        ref_d = pred.decide(ref_p)
        top2 = np.sort(ref_p, axis=1)[:, -2:]
        print(f"model on the exact decodes: {len(set(ref_d.tolist()))} distinct decisions, "
              f"median top-1 - top-2 probability margin {np.median(top2[:, 1] - top2[:, 0]):.3f}\n")
        print("| decode | decoded short side | max abs diff, 8-bit | 99.9th pct | mean | max abs diff, input "
              "| max abs diff, probability | decisions changed |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name in ("JPEG draft", "PNG reduce"):
            ims = decoded[name]
            short = sorted({min(im.size) for im in ims})
            u8 = np.abs(np.stack([np.asarray(spec.geometric(im), np.int16) for im in ims]) - ref_u8)
            x = np.abs(np.stack([spec.to_float_hwc(im) for im in ims]) - ref_x)
            p = pred.predict_proba(ims, tta=False)
            changed = int((pred.decide(p) != ref_d).sum())
            print(f"| {name} | {short[0]}-{short[-1]} px | {u8.max()} | {np.percentile(u8, 99.9):.0f} | {u8.mean():.3f} | "
                  f"{x.max():.4f} | {np.abs(p - ref_p).max():.4f} | {changed} / {len(ims)} ({100 * changed / len(ims):.1f} %) |")


if __name__ == "__main__":
    main()
