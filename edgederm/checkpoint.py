"""edgederm checkpoints: model weights + the card, loadable with ``weights_only=True``.

A checkpoint holds one or more members (an ensemble is a list of members with weights in the
card), each as ``(registry name, num_classes, build kwargs, state_dict)``, so it is rebuilt via
the model registry — no pickled code. The card is stored as a JSON string. Training state for
``--resume`` (optimizer, scheduler, RNG, epoch) goes in the separate ``last.pt`` the trainer
writes, never in the released checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .card import ArtifactCard
from .errors import CardError
from .fsutil import atomic_path

from .formats.torch.metadata import FORMAT, FORMAT_VERSION, read_payload


@dataclass
class Member:
    name: str
    num_classes: int
    kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    def build(self) -> nn.Module:
        from .models import create_model

        model = create_model(self.name, self.num_classes, **self.kwargs)
        model.load_state_dict(self.state_dict)
        return model.eval()


def member_from_model(name: str, model: nn.Module, num_classes: int, **kwargs: Any) -> Member:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Member(name=name, num_classes=num_classes, kwargs=dict(kwargs), state_dict=state)


def save_checkpoint(path: str | Path, members: list[Member], card: ArtifactCard) -> Path:
    """Write the checkpoint atomically, record its hash in the card, write the sidecar."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "card": card.to_json(),
        "members": [
            {"name": m.name, "num_classes": m.num_classes, "kwargs": json.dumps(m.kwargs), "state_dict": m.state_dict}
            for m in members
        ],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    # The card inside cannot contain the file's own hash; the sidecar does.
    card.describe_artifact(path, fmt="torch", precision="fp32")
    card.write_sidecar(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[list[Member], ArtifactCard]:
    path = Path(path)
    payload = read_payload(path)
    card = ArtifactCard.from_json(payload["card"], source=str(path))
    members = [
        Member(m["name"], int(m["num_classes"]), json.loads(m["kwargs"]), m["state_dict"]) for m in payload["members"]
    ]
    if not members:
        raise CardError(f"{path}: checkpoint has no model members")
    return members, card


def read_checkpoint_card(path: str | Path) -> ArtifactCard:
    return load_checkpoint(path)[1]
