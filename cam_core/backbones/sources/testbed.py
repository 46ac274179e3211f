"""The testbed's own models (cam_core.testbed), trained by `python -m cam_core testbed train`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ...banks import DatasetBank
from ...testbed.generate import generate
from ...testbed.models import build_model
from ..backbone import Backbone, BackboneError
from ..registry import register_backbone
from ..timm_adapter import wrap_timm
from .checkpoint import load_state_file

TESTBED_DIR = Path(__file__).resolve().parents[3] / "assets" / "testbed"


def load_testbed(prefix: str | Path, name: str | None = None) -> Backbone:
    """A model trained by `python -m cam_core testbed train`: PREFIX.safetensors + PREFIX.json."""
    prefix = Path(prefix)
    card_path, weights = prefix.with_suffix(".json"), prefix.with_suffix(".safetensors")
    if not card_path.exists() or not weights.exists():
        raise BackboneError(
            f"{prefix.name} is not trained yet ({weights} missing): run `python -m cam_core testbed generate "
            f"--out data/testbed` then `python -m cam_core testbed train --arch cnn|vit --data data/testbed "
            f"--out {prefix}`"
        )
    card = json.loads(card_path.read_text())
    model = build_model(card["arch"], len(card["classes"]), card["config"])
    model.load_state_dict(load_state_file(weights), strict=True)
    size = int(card["input_size"])
    val = card.get("val", {})
    data = card.get("data", {})
    source = (f"trained on the testbed by cam_core (data seed {data.get('seed')}, {card['training']['epochs']} epochs, "
              f"val mAP {val.get('mAP', float('nan')):.3f})")
    # Dilated convolutions ran slower in channels-last on the 2-core CPU.
    bb = wrap_timm(model, name or prefix.name, source, list(card["classes"]),
                   {"input_size": (3, size, size), "mean": card["mean"], "std": card["std"],
                    "interpolation": "bicubic"}, channels_last=False)
    bb.default_bank = training_data_bank(data)
    return bb


def training_data_bank(data: dict) -> DatasetBank | None:
    """LPCAM's default bank: the train split of the testbed the card's model was trained on,
    regenerated from its seed (the generator is deterministic) into the cache on first use."""
    if "n" not in data or "seed" not in data:
        return None
    n, seed = int(data["n"]), int(data["seed"])
    val_fraction = round(int(data["val"]) / n, 6) if "val" in data else 0.2
    return DatasetBank(
        name=f"testbed train split (n {n}, seed {seed})", split="train",
        generate=functools.partial(generate, n=n, seed=seed, val_fraction=val_fraction),
        data_id=f"testbed-n{n}-seed{seed}-val{val_fraction:g}",
    )


for _arch in ("cnn", "vit"):
    register_backbone(
        f"testbed-{_arch}",
        f"{'ResNet' if _arch == 'cnn' else 'ViT with a TS-CAM head'} trained on the generated testbed (8 classes, 128 px)",
        (lambda a=_arch: load_testbed(TESTBED_DIR / f"testbed-{a}")),
    )
