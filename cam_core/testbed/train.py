"""Training the testbed's models from image-level labels only (multi-label), on CPU or GPU.

    python -m cam_core testbed train --arch cnn|vit --data DIR --out assets/testbed/testbed-cnn

Writes OUT.safetensors (the state dict) and OUT.json (the card: architecture and its
configuration, classes, the data's generation seed, epochs, seed, validation accuracy).
Reproducible from the seed on a given machine: seeded initialisation, batch order and
augmentation, no data-loader workers.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..voc import VOCDataset
from .models import CNN_CONFIG, INPUT_SIZE, MEAN, STD, VIT_CONFIG, build_model

DEFAULTS = {"cnn": {"epochs": 30, "lr": 3e-3, "batch_size": 32}, "vit": {"epochs": 40, "lr": 1e-3, "batch_size": 32}}


def load_split(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of a split as one normalised N x 3 x H x W tensor, and N x K multi-hot labels."""
    ds = VOCDataset(root, split)
    images, labels = [], []
    k = len(ds.class_names)
    for sample in ds:
        rgb = sample.image().rgb
        if rgb.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC))
        images.append(torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1))
        y = torch.zeros(k)
        y[sample.labels] = 1.0
        labels.append(y)
    x = torch.stack(images).float().div_(255.0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.stack(labels), list(ds.class_names)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve, stepwise (as sklearn's average_precision_score)."""
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def evaluate_classifier(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> dict:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    scores, labels = logits.sigmoid().numpy(), y.numpy()
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    pred = scores > 0.5
    return {
        "mAP": float(np.nanmean(aps)),
        "AP": [round(a, 4) for a in aps],
        "label_accuracy": float((pred == (labels > 0.5)).mean()),
        "exact_match": float((pred == (labels > 0.5)).all(axis=1).mean()),
    }


def train(
    data: str | Path,
    arch: str,
    out: str | Path,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train `arch` on the train split with BCE on image-level labels; evaluate on val; save."""
    defaults = DEFAULTS[arch]
    epochs = epochs or defaults["epochs"]
    lr = lr or defaults["lr"]
    batch_size = batch_size or defaults["batch_size"]
    t0 = time.time()
    x_train, y_train, classes = load_split(data, "train")
    x_val, y_val, _ = load_split(data, "val")
    torch.manual_seed(seed)
    model = build_model(arch, len(classes)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05 if arch == "vit" else 1e-4)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    step, losses = 0, []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        flips = torch.rand(len(x_train), generator=gen) < 0.5
        epoch_loss = []
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = x_train[idx].clone()
            xb[flips[idx]] = xb[flips[idx]].flip(-1)  # the only augmentation: mirror images
            xb, yb = xb.to(device), y_train[idx].to(device)
            loss = F.binary_cross_entropy_with_logits(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            epoch_loss.append(loss.item())
            step += 1
            if step >= total:
                break
        losses.append(float(np.mean(epoch_loss)))
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.time() - t0:.0f} s)")
        if step >= total:
            break
    model.cpu()
    val = evaluate_classifier(model, x_val, y_val)
    train_metrics = evaluate_classifier(model, x_train[:512], y_train[:512])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out.with_suffix(".safetensors")))
    meta_path = Path(data) / "testbed.json"
    data_meta = json.loads(meta_path.read_text())["info"] if meta_path.exists() else {"root": str(data)}
    card = {
        "arch": arch,
        "config": CNN_CONFIG if arch == "cnn" else VIT_CONFIG,
        "classes": classes,
        "input_size": INPUT_SIZE,
        "mean": MEAN,
        "std": STD,
        "data": {k: data_meta[k] for k in ("n", "seed", "train", "val") if k in data_meta},
        "training": {"epochs": len(losses), "steps": step, "batch_size": batch_size, "lr": lr, "seed": seed,
                     "loss": "binary cross-entropy on image-level labels", "final_loss": round(losses[-1], 5),
                     "augmentation": "horizontal flip", "device": device, "seconds": round(time.time() - t0, 1)},
        "val": val,
        "train_subset": {k: train_metrics[k] for k in ("mAP", "exact_match")},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return card
