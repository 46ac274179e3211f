"""Training the testbed's models from image-level labels only (multi-label), on CPU or GPU.

    python -m cam_core testbed train --arch cnn|vit --data DIR --out assets/testbed/testbed-cnn
    python -m cam_core testbed train --arch ci-cam --role cls|loc --data DIR --out PREFIX
    python -m cam_core testbed train --arch kd-ci-cam --cls-teacher PREFIX --loc-teacher PREFIX --data DIR --out PREFIX

Writes OUT.safetensors (the state dict) and OUT.json (the card: architecture and its
configuration, classes, the data's generation seed and version, epochs, seed, validation
accuracy, and on a version-2 testbed the heldout split's). Reproducible from the seed on a
given machine: seeded initialisation, batch order and augmentation, no data-loader workers.

CI-CAM (cicam.py) trains with its official loss; its two roles are the official run
scripts' teachers (KD-CI-CAM-teacher-github/github_run_vgg16_cub.sh): "cls", the
classification teacher (random-resized crops down to 0.2 of the image, the foreground loss
at rate 1, seg_thr 0.08, the spa loss at 0.04), and "loc", the localisation teacher (no
crops, the diff and aux losses at 0.5, seg_thr 0). KD-CI-CAM trains a CI-CAM student from two
such teachers with the student script's losses (each image flagged at random for no
teacher, the classification teacher on a crop down to 0.2, or the localisation teacher on a
crop down to 0.1). Crops take their labels from the masks: a class is in a crop when at
least 30% of its pixels are. The optimiser and schedule are the testbed's (AdamW, one-cycle)
for every arch: the official poly schedule with a slower backbone is for a pretrained VGG.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..voc import VOCDataset
from .models import CNN_CONFIG, INPUT_SIZE, MEAN, STD, VIT_CONFIG, build_model

DEFAULTS = {"cnn": {"epochs": 30, "lr": 3e-3, "batch_size": 32}, "vit": {"epochs": 40, "lr": 1e-3, "batch_size": 32},
            "ci-cam": {"epochs": 30, "lr": 3e-3, "batch_size": 32},
            "kd-ci-cam": {"epochs": 30, "lr": 3e-3, "batch_size": 32}}
ARCHS = tuple(DEFAULTS)
# crop_min_scale 0: no crops
TEACHER_ROLES = {
    "loc": {"crop_min_scale": 0.0, "aux_type": "diff_aux", "aux_rate": 0.5, "seg_thr": 0.0, "spa_rate": 0.0,
            "update_rate": 0.01, "function": "quadratic"},
    "cls": {"crop_min_scale": 0.2, "aux_type": "fore", "aux_rate": 1.0, "seg_thr": 0.08, "spa_rate": 0.04,
            "update_rate": 0.01, "function": "quadratic"},
}
# github_run_student_vgg16_cub.sh: kd_alpha 0.8, both temperatures 15, kd_fe_loss 1 (MSE) x 1.0,
# update_rate 0.002; option.py: cls_min_scale 0.2, loc_min_scale 0.1.
STUDENT_DEFAULTS = {"alpha": 0.8, "cls_temperature": 15.0, "loc_temperature": 15.0, "loc_weight": 1.0,
                    "loc_kind": "mse", "official_kl": False, "cls_min_scale": 0.2, "loc_min_scale": 0.1,
                    "update_rate": 0.002}
CROP_KEEP = 0.3  # a class is in a crop when at least this share of its pixels is


class TrainError(ValueError):
    """Bad arguments to train(): an unknown option, a missing or mismatched teacher."""


def data_meta(root: str | Path) -> dict:
    path = Path(root) / "testbed.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _resized(arr: np.ndarray, size: int, resample) -> np.ndarray:
    if arr.shape[:2] == (size, size):
        return arr
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((size, size), resample))


def load_masks(root: str | Path, split: str, size: int = INPUT_SIZE) -> torch.Tensor:
    """The class masks of a split (0 background, c + 1 class c, 255 void), N x size x size uint8."""
    from PIL import Image

    return torch.stack([torch.from_numpy(np.array(_resized(s.mask, size, Image.NEAREST), copy=True))
                        for s in VOCDataset(root, split)])


def load_split(root: str | Path, split: str, size: int = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of a split as one normalised N x 3 x H x W tensor, and N x K multi-hot labels."""
    from PIL import Image

    ds = VOCDataset(root, split)
    images, labels = [], []
    k = len(ds.class_names)
    for sample in ds:
        rgb = _resized(sample.image().rgb, size, Image.BICUBIC)
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


def evaluate_classifier(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, device="cpu") -> dict:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]).cpu()
    scores, labels = logits.sigmoid().numpy(), y.numpy()
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    pred = scores > 0.5
    return {
        "mAP": float(np.nanmean(aps)),
        "AP": [round(a, 4) for a in aps],
        "label_accuracy": float((pred == (labels > 0.5)).mean()),
        "exact_match": float((pred == (labels > 0.5)).all(axis=1).mean()),
    }


def random_resized_crops(x: torch.Tensor, masks: torch.Tensor, num_classes: int, min_scale: torch.Tensor,
                         gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image cropped as torchvision's RandomResizedCrop draws it (area share uniform in
    [min_scale[i], 1], aspect log-uniform in [3/4, 4/3], ten tries then the whole image) and
    resized back; min_scale[i] >= 1 leaves image i whole. Labels from the masks: a class
    whose crop keeps at least CROP_KEEP of its pixels."""
    n, _, h, w = x.shape
    out = x.clone()
    labels = torch.zeros(n, num_classes)
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for i in range(n):
        top, left, ch, cw = 0, 0, h, w
        lo = float(min_scale[i])
        for _ in range(10 if lo < 1 else 0):
            u = torch.rand(3, generator=gen).tolist()
            area = h * w * (lo + (1 - lo) * u[0])
            ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
            tw, th = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < tw <= w and 0 < th <= h:
                v = torch.rand(2, generator=gen).tolist()
                top, left, ch, cw = int(v[0] * (h - th + 1)), int(v[1] * (w - tw + 1)), th, tw
                break
        if (ch, cw) != (h, w):
            out[i] = F.interpolate(x[i : i + 1, :, top : top + ch, left : left + cw], size=(h, w), mode="bilinear",
                                   align_corners=False)[0]
        full = torch.bincount(masks[i].flatten().long(), minlength=256)[1 : num_classes + 1]
        kept = torch.bincount(masks[i, top : top + ch, left : left + cw].flatten().long(),
                              minlength=256)[1 : num_classes + 1]
        labels[i] = ((full > 0) & (kept >= CROP_KEEP * full)).float()
    return out, labels


def load_trained(prefix: str | Path) -> tuple[torch.nn.Module, dict]:
    """A model written by train(): PREFIX.safetensors + PREFIX.json, in eval mode."""
    from ..backbones.backbone import BackboneError
    from ..backbones.sources.checkpoint import load_state_file

    prefix = Path(prefix)
    card_path = prefix.with_suffix(".json")
    if not card_path.is_file():
        raise BackboneError(f"{card_path} does not exist: train it first (python -m cam_core testbed train ...)")
    card = json.loads(card_path.read_text())
    model = build_model(card["arch"], len(card["classes"]), card["config"])
    model.load_state_dict(load_state_file(prefix.with_suffix(".safetensors")), strict=True)
    return model.eval(), card


def parse_options(items: list[str]) -> dict[str, str]:
    """["alpha=0.5", ...] -> {"alpha": "0.5"} (checked and typed by train)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainError(f"--set expects KEY=VALUE, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def _options(arch: str, role: str, options: dict | None) -> dict:
    base = dict(TEACHER_ROLES[role]) if arch == "ci-cam" else dict(STUDENT_DEFAULTS) if arch == "kd-ci-cam" else {}
    unknown = set(options or {}) - set(base)
    if unknown:
        raise TrainError(f"unknown option(s) {', '.join(sorted(unknown))} for {arch}: "
                         f"{', '.join(sorted(base)) or 'it takes none'}")
    for key, value in (options or {}).items():
        try:
            kind = type(base[key])
            base[key] = str(value).lower() in ("1", "true") if kind is bool else kind(value)
        except ValueError:
            raise TrainError(f"option {key}={value}: expected a {type(base[key]).__name__}") from None
    return base


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
    role: str = "loc",
    options: dict | None = None,
    cls_teacher: str | Path | None = None,
    loc_teacher: str | Path | None = None,
) -> dict:
    """Train `arch` on the train split with BCE on image-level labels (and, for ci-cam and
    kd-ci-cam, their official losses: cicam.py); evaluate on val (and heldout); save."""
    if arch not in DEFAULTS:
        raise TrainError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if role not in TEACHER_ROLES:
        raise TrainError(f"role must be cls or loc, got {role!r}")
    opts = _options(arch, role, options)
    defaults = DEFAULTS[arch]
    epochs = epochs or defaults["epochs"]
    lr = lr or defaults["lr"]
    batch_size = batch_size or defaults["batch_size"]
    t0 = time.time()
    meta = data_meta(data)
    size = int(meta.get("size", INPUT_SIZE))
    x_train, y_train, classes = load_split(data, "train", size)
    x_val, y_val, _ = load_split(data, "val", size)
    crops = arch == "kd-ci-cam" or (arch == "ci-cam" and opts["crop_min_scale"] > 0)
    masks = load_masks(data, "train", size) if crops else None
    teachers = {}
    if arch == "kd-ci-cam":
        if cls_teacher is None or loc_teacher is None:
            raise TrainError("kd-ci-cam needs both teachers: --cls-teacher PREFIX --loc-teacher PREFIX (ci-cam models)")
        for key, prefix in (("cls", cls_teacher), ("loc", loc_teacher)):
            teacher, card = load_trained(prefix)
            if card["arch"] != "ci-cam" or card["classes"] != classes or int(card["input_size"]) != size:
                raise TrainError(f"teacher {prefix} is a {card['arch']} for {card['classes']} at "
                                    f"{card['input_size']} px; a ci-cam for these {len(classes)} classes at {size} px "
                                    "is needed")
            teachers[key] = teacher.to(device).requires_grad_(False)
    torch.manual_seed(seed)
    config = {"cnn": dict(CNN_CONFIG), "vit": {**VIT_CONFIG, "img_size": size}}.get(arch, {"input_size": size})
    model = build_model(arch, len(classes), config).to(device)
    config = getattr(model, "config", config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05 if arch == "vit" else 1e-4)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    # The train split sits on the device (960 images at 160 px: 295 MB): batches are cut there, not copied per step.
    x_dev = x_train.to(device)
    step, losses = 0, []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        flips = torch.rand(len(x_train), generator=gen) < 0.5
        epoch_loss = []
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb, yb = x_dev[idx.to(x_dev.device)], y_train[idx].clone()
            flags = None
            if arch == "kd-ci-cam":  # the student script's "random" distillation: no teacher, cls or loc
                flags = torch.randint(0, 3, (len(idx),), generator=gen)
                scale = torch.where(flags == 2, opts["loc_min_scale"], opts["cls_min_scale"])
                xb, yb = random_resized_crops(xb, masks[idx], len(classes), scale, gen)
            elif crops:
                xb, yb = random_resized_crops(xb, masks[idx], len(classes),
                                              torch.full((len(idx),), opts["crop_min_scale"]), gen)
            flip = flips[idx].to(xb.device)
            xb[flip] = xb[flip].flip(-1)  # mirror images (the only augmentation of cnn and vit)
            xb, yb = xb.to(device), yb.to(device)
            if arch in ("cnn", "vit"):
                loss = F.binary_cross_entropy_with_logits(model(xb), yb)
            else:
                loss = _cicam_step(model, xb, yb, arch, opts, teachers, flags)
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
    heldout = None
    if (Path(data) / "ImageSets" / "Segmentation" / "heldout.txt").is_file():
        x_held, y_held, _ = load_split(data, "heldout", size)
        heldout = evaluate_classifier(model, x_held, y_held)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out.with_suffix(".safetensors")))
    data_info = meta.get("info", {"root": str(data)})
    training = {"epochs": len(losses), "steps": step, "batch_size": batch_size, "lr": lr, "seed": seed,
                "loss": "binary cross-entropy on image-level labels", "final_loss": round(losses[-1], 5),
                "augmentation": "horizontal flip", "device": device, "seconds": round(time.time() - t0, 1)}
    if arch == "ci-cam":
        training.update({"loss": "CI-CAM's: BCE(up) + BCE(down) + auxiliary foreground/background losses (cicam.py)",
                         "role": role, **opts})
        if crops:
            training["augmentation"] = f"random-resized crops (area >= {opts['crop_min_scale']}), horizontal flip"
    elif arch == "kd-ci-cam":
        training.update({"loss": "KD-CI-CAM's student loss (cicam.student_loss)", **opts,
                         "teachers": {"cls": str(cls_teacher), "loc": str(loc_teacher)},
                         "augmentation": "random-resized crops per flag, horizontal flip"})
    card = {
        "arch": arch,
        "config": config,
        "classes": classes,
        "input_size": size,
        "mean": MEAN,
        "std": STD,
        "data": {k: data_info[k] for k in ("n", "seed", "train", "val", "version", "heldout") if k in data_info},
        "training": training,
        "val": val,
        "train_subset": {k: train_metrics[k] for k in ("mAP", "exact_match")},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if heldout is not None:
        card["heldout"] = heldout
    out.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return card


def _cicam_step(model, xb, yb, arch, opts, teachers, flags) -> torch.Tensor:
    """One CI-CAM or KD-CI-CAM loss; the dictionary is updated from the batch's up branch
    before the backward pass, as the official loops do."""
    from .cicam import student_loss, teacher_loss

    out = model.branches(xb)
    if arch == "ci-cam":
        loss = teacher_loss(model, xb, yb, out, aux_type=opts["aux_type"], aux_rate=opts["aux_rate"],
                            seg_thr=opts["seg_thr"], spa_rate=opts["spa_rate"], function=opts["function"])
    else:
        flags = flags.to(xb.device)
        with torch.no_grad():
            t_cls = teachers["cls"](xb) if (flags == 1).any() else None
            t_loc = teachers["loc"].branches(xb).down_cam if (flags == 2).any() else None
        loss = student_loss(out, yb, flags, t_cls, t_loc, alpha=opts["alpha"],
                            cls_temperature=opts["cls_temperature"], loc_temperature=opts["loc_temperature"],
                            loc_weight=opts["loc_weight"], loc_kind=opts["loc_kind"], official_kl=opts["official_kl"])
    if model.config["attention"]:
        model.update_dictionary(yb, out.up_logits, out.up_cam, opts["update_rate"])
    return loss
