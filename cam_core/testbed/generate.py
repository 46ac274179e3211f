"""A procedurally generated weakly-supervised segmentation set with exact masks, in PASCAL VOC
layout, with the failure modes the CAM papers are about planted on purpose. Two versions:
version 1 (below, kept byte-for-byte reproducible for a seed) plants them softly; version 2
(`VERSION2`, further down) plants them hard.

* Partial activation: every object is a large BODY plus a small PART. The part alone tells
  the class apart (each class has its own part shape and colour); the body's shape is shared
  by a pair of classes and its colour is drawn from one palette for all. A classifier can
  decide from the part, so its CAM lights the part and misses most of the body.
* Context confounder: the "water" classes appear on the water texture most of the time (like
  boats and fish), the others rarely, so the background carries class evidence.

Version 2:

* Partial activation, hard: the body carries no class evidence at all (its shape and colour
  are drawn for every instance from the same four shapes and one palette, whatever the
  class), bodies are larger (160 px images) and parts smaller (about 4% of the body): only
  the part tells the class apart. And a body is not even evidence that an object is there:
  most images also hold one or two decoys, bodies without a part, which are background in
  every mask. (Measured, the decoys did not lower the CNN's CAM body recall: 0.815 with
  them, 0.825 without, against parts at 0.97-1.0; the bodies are too small for the CNN's
  receptive field. bench/testbed_v2_variants.py has larger settings to train next.)
* Context confounder, hard: the water classes sit on water in 95% of train/val images, the
  others in 3%; and a third split, `heldout`, flips it: every image with a water class is on
  another background and every image without one is on water.

Written as JPEGImages, SegmentationClass (palette PNG, 0 = background, c + 1 = class c),
SegmentationObject (instance ids), Annotations (VOC XML with boxes) and
ImageSets/Segmentation/{train,val}.txt (version 2 adds heldout.txt), plus two files of our
own: SegmentationPart (0 = background, 1 = body, 2 = part) and testbed.json (version,
classes and generation settings; version 2 also each image's background texture).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import cv2
import numpy as np
from PIL import Image

BODIES = ("disc", "slab", "kite", "hex")
PARTS = (  # (name, BGR-free RGB colour) — one per class, two per body
    ("star", (250, 220, 40)), ("ring", (40, 230, 230)),
    ("cross", (240, 40, 200)), ("tri", (255, 120, 20)),
    ("bar", (30, 30, 30)), ("dots", (250, 250, 250)),
    ("chev", (90, 240, 60)), ("square", (150, 60, 255)),
)
CLASSES = tuple(f"{BODIES[i // 2]}-{PARTS[i][0]}" for i in range(8))
BODY_PALETTE = ((176, 122, 84), (128, 128, 136), (160, 150, 70), (120, 90, 140), (200, 170, 130), (90, 120, 110))
TEXTURES = ("water", "grass", "sand", "bricks", "wood", "tiles")
WATER_CLASSES = (0, 5)  # disc-star and kite-dots live on water
WATER_PROB_WITH = 0.85
WATER_PROB_WITHOUT = 0.05
SIZE = 128


@dataclass(frozen=True)
class Instance:
    cls: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 inclusive, of body + part


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map: index -> RGB, bits of the index spread over the channels."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


# ----- drawing ---------------------------------------------------------------------------
def texture(name: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    if name == "water":
        phase = rng.uniform(0, 2 * math.pi)
        waves = np.sin(xx / 6.0 + np.sin(yy / 9.0 + phase) * 2.0)
        base = np.stack([30 + 10 * waves, 90 + 25 * waves, 170 + 30 * waves], -1)
    elif name == "grass":
        base = np.stack([60 + 0 * xx, 140 + 0 * xx, 50 + 0 * xx], -1) + 25 * np.abs(noise)[..., None] * [0.3, 1, 0.3]
    elif name == "sand":
        base = np.stack([210 + 0 * xx, 190 + 0 * xx, 140 + 0 * xx], -1) + 12 * noise[..., None]
    elif name == "bricks":
        row = (yy // 12).astype(int)
        mortar = ((yy % 12) < 2) | (((xx + 12 * (row % 2)) % 24) < 2)
        base = np.where(mortar[..., None], [200, 200, 190], [160, 70, 50]).astype(np.float32) + 8 * noise[..., None]
    elif name == "wood":
        grain = np.sin(yy / 3.0 + 3 * noise)
        base = np.stack([150 + 25 * grain, 100 + 18 * grain, 60 + 10 * grain], -1)
    else:  # tiles
        check = ((xx // 16 + yy // 16) % 2).astype(np.float32)
        base = np.stack([90 + 120 * check, 90 + 120 * check, 100 + 120 * check], -1) + 6 * noise[..., None]
    return np.clip(base, 0, 255).astype(np.uint8)


def _body_polygon(kind: str, cx: float, cy: float, rx: float, ry: float, angle: float) -> np.ndarray:
    if kind == "disc":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], -1)
    elif kind == "slab":
        pts = np.array([[-rx, -ry * 0.7], [rx, -ry * 0.7], [rx, ry * 0.7], [-rx, ry * 0.7]])
    elif kind == "kite":
        pts = np.array([[0, -ry], [rx * 0.8, -ry * 0.1], [0, ry], [-rx * 0.8, -ry * 0.1]])
    else:  # hex
        t = np.linspace(0, 2 * math.pi, 6, endpoint=False)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], -1)
    c, s = math.cos(angle), math.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return np.round(rot + [cx, cy]).astype(np.int32)


def _draw_part(mask: np.ndarray, kind: str, cx: int, cy: int, r: int) -> None:
    """Draw the part's shape with value 1 into mask (uint8)."""
    if kind == "star":
        t = np.linspace(-math.pi / 2, 1.5 * math.pi, 10, endpoint=False)
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], -1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    elif kind == "ring":
        cv2.circle(mask, (cx, cy), r, 1, thickness=max(2, r // 2))
    elif kind == "cross":
        w = max(2, r // 2)
        cv2.rectangle(mask, (cx - r, cy - w // 2), (cx + r, cy + w // 2), 1, -1)
        cv2.rectangle(mask, (cx - w // 2, cy - r), (cx + w // 2, cy + r), 1, -1)
    elif kind == "tri":
        pts = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    elif kind == "bar":
        cv2.rectangle(mask, (cx - r, cy - r // 2), (cx + r, cy + r // 2), 1, -1)
    elif kind == "dots":
        for dx in (-r // 2 - 1, r // 2 + 1):
            cv2.circle(mask, (cx + dx, cy), max(2, r // 2), 1, -1)
    elif kind == "chev":
        pts = np.array([[cx - r, cy - r // 2], [cx, cy + r // 2], [cx + r, cy - r // 2]], np.int32)
        cv2.polylines(mask, [pts], False, 1, thickness=max(2, r // 2))
    else:  # square
        cv2.rectangle(mask, (cx - r + 1, cy - r + 1), (cx + r - 1, cy + r - 1), 1, -1)


def draw_object(rng: np.random.Generator, cls: int, size: int = SIZE):
    """Body and part masks (bool, size x size) and the body colour of one object of `cls`,
    centred at a random place."""
    body_kind = BODIES[cls // 2]
    rx, ry = rng.uniform(16, 27), rng.uniform(14, 24)
    cx, cy = rng.uniform(rx, size - rx), rng.uniform(ry, size - ry)
    angle = rng.uniform(-0.5, 0.5)
    body = np.zeros((size, size), np.uint8)
    cv2.fillPoly(body, [_body_polygon(body_kind, cx, cy, rx, ry, angle)], 1)
    part = np.zeros((size, size), np.uint8)
    # The part sits inside the body, off-centre, about 1/10 of the body's area.
    pr = int(round(min(rx, ry) * rng.uniform(0.34, 0.42)))
    ox, oy = rng.uniform(-0.35, 0.35) * rx, rng.uniform(-0.45, -0.2) * ry
    _draw_part(part, PARTS[cls][0], int(round(cx + ox)), int(round(cy + oy)), max(3, pr))
    part &= body
    colour = BODY_PALETTE[rng.integers(len(BODY_PALETTE))]
    return body.astype(bool) & ~part.astype(bool), part.astype(bool), colour


# ----- one image -----------------------------------------------------------------------------
def make_sample(rng: np.random.Generator, size: int = SIZE):
    """(rgb, class mask, instance mask, part mask, instances, texture name)."""
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    classes = [int(c) for c in rng.choice(len(CLASSES), n, replace=False)]
    water = rng.random() < (WATER_PROB_WITH if any(c in WATER_CLASSES for c in classes) else WATER_PROB_WITHOUT)
    tex = "water" if water else TEXTURES[1 + rng.integers(len(TEXTURES) - 1)]
    return _paint(rng, tex, classes, size, draw_object)


def _paint(rng: np.random.Generator, tex: str, classes: list[int], size: int, draw, decoys: int = 0):
    """Draw the background texture, `decoys` part-less bodies (background in every mask) and
    the objects of `classes` (draw(rng, cls, size) gives body, part and colour) in order;
    (rgb, class mask, instance mask, part mask, instances, tex)."""
    rgb = texture(tex, rng, size).astype(np.float32)
    for _ in range(decoys):
        body, part, colour = draw(rng, 0, size)
        shade = 1.0 + 0.15 * rng.normal(0, 1, (size, size, 1)).astype(np.float32)
        rgb = np.where((body | part)[..., None], np.clip(np.array(colour, np.float32) * shade, 0, 255), rgb)
    cls_mask = np.zeros((size, size), np.uint8)
    inst_mask = np.zeros((size, size), np.uint8)
    part_mask = np.zeros((size, size), np.uint8)
    instances: list[Instance] = []
    for cls in classes:
        for _ in range(20):  # place without covering more than 15% of what is already there
            body, part, colour = draw(rng, cls, size)
            obj = body | part
            if (obj & (cls_mask > 0)).sum() <= 0.15 * obj.sum():
                break
        else:
            continue
        shade = 1.0 + 0.15 * rng.normal(0, 1, (size, size, 1)).astype(np.float32)
        rgb = np.where(body[..., None], np.clip(np.array(colour, np.float32) * shade, 0, 255), rgb)
        rgb = np.where(part[..., None], np.array(PARTS[cls][1], np.float32), rgb)
        cls_mask[obj] = cls + 1
        inst_mask[obj] = len(instances) + 1
        part_mask[body] = 1
        part_mask[part] = 2
        instances.append(Instance(cls, (0, 0, 0, 0)))
    # boxes from what stays visible of each instance (later objects may cover earlier ones)
    final = []
    for i, inst in enumerate(instances, start=1):
        ys, xs = np.nonzero(inst_mask == i)
        if len(xs) == 0:
            continue
        final.append(Instance(inst.cls, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    return np.clip(rgb, 0, 255).astype(np.uint8), cls_mask, inst_mask, part_mask, final, tex


# ----- version 2: the failures planted hard --------------------------------------------------
CLASSES_V2 = tuple(name for name, _ in PARTS)  # the part is the class: bodies say nothing
WATER_CLASSES_V2 = (0, 5)  # star and dots live on water
WATER_PROB_WITH_V2 = 0.95
WATER_PROB_WITHOUT_V2 = 0.03
SIZE_V2 = 160
BODY_RADII_V2 = ((24.0, 40.0), (22.0, 36.0))  # rx, ry ranges (v1: 16-27, 14-24 on 128 px)
PART_RADIUS_V2 = (5.5, 8.0)  # in pixels, whatever the body's size (v1: 0.34-0.42 of its radius)
DECOYS_V2 = (0.3, 0.4, 0.3)  # probability of 0, 1, 2 part-less bodies per image


def draw_object_v2(rng: np.random.Generator, cls: int, size: int = SIZE_V2):
    """As draw_object, but the body's shape is drawn at random (not from the class) and the
    part's radius is absolute and small."""
    body_kind = BODIES[int(rng.integers(len(BODIES)))]
    rx, ry = rng.uniform(*BODY_RADII_V2[0]), rng.uniform(*BODY_RADII_V2[1])
    cx, cy = rng.uniform(rx, size - rx), rng.uniform(ry, size - ry)
    angle = rng.uniform(-0.5, 0.5)
    body = np.zeros((size, size), np.uint8)
    cv2.fillPoly(body, [_body_polygon(body_kind, cx, cy, rx, ry, angle)], 1)
    part = np.zeros((size, size), np.uint8)
    pr = int(round(rng.uniform(*PART_RADIUS_V2)))
    ox, oy = rng.uniform(-0.3, 0.3) * rx, rng.uniform(-0.4, -0.15) * ry
    _draw_part(part, PARTS[cls][0], int(round(cx + ox)), int(round(cy + oy)), pr)
    part &= body
    colour = BODY_PALETTE[rng.integers(len(BODY_PALETTE))]
    return body.astype(bool) & ~part.astype(bool), part.astype(bool), colour


def make_sample_v2(rng: np.random.Generator, size: int = SIZE_V2, heldout: bool = False):
    """As make_sample, with draw_object_v2 and the v2 confounder; `heldout` flips the
    background (water classes on other textures, the rest on water)."""
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    classes = [int(c) for c in rng.choice(len(CLASSES_V2), n, replace=False)]
    has_water_class = any(c in WATER_CLASSES_V2 for c in classes)
    if heldout:
        water = not has_water_class
    else:
        water = rng.random() < (WATER_PROB_WITH_V2 if has_water_class else WATER_PROB_WITHOUT_V2)
    tex = "water" if water else TEXTURES[1 + rng.integers(len(TEXTURES) - 1)]
    decoys = int(rng.choice(len(DECOYS_V2), p=DECOYS_V2)) if any(DECOYS_V2[1:]) else 0
    return _paint(rng, tex, classes, size, draw_object_v2, decoys)


def _annotation_xml(image_id: str, size: int, instances: list[Instance], classes=CLASSES) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "testbed"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    sz = ET.SubElement(root, "size")
    for tag, val in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    ET.SubElement(root, "segmented").text = "1"
    for inst in instances:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[inst.cls]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based and inclusive
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), inst.box):
            ET.SubElement(bb, tag).text = str(val + 1)
    return ET.tostring(root, encoding="utf-8")


@dataclass(frozen=True)
class TestbedInfo:
    root: str
    n: int
    seed: int
    train: int
    val: int
    version: int = 1
    heldout: int = 0


VERSIONS = (1, 2)


def generate(out: str | Path, n: int = 1200, seed: int = 0, val_fraction: float = 0.2, size: int | None = None,
             progress=None, version: int = 1, heldout_fraction: float = 0.2) -> TestbedInfo:
    """Write n images (deterministic for the seed and version) in VOC layout under `out`.
    Version 2 also writes round(n * heldout_fraction) images of the `heldout` split, from a
    random stream of their own (train and val do not depend on how many)."""
    if version not in VERSIONS:
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    size = size or (SIZE if version == 1 else SIZE_V2)
    classes = CLASSES if version == 1 else CLASSES_V2
    out = Path(out)
    dirs = {k: out / k for k in ("JPEGImages", "SegmentationClass", "SegmentationObject", "SegmentationPart",
                                 "Annotations", "ImageSets/Segmentation")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    backgrounds: dict[str, str] = {}

    def write(image_id, sample):
        rgb, cls_mask, inst_mask, part_mask, instances, tex = sample
        Image.fromarray(rgb).save(dirs["JPEGImages"] / f"{image_id}.jpg", quality=95)
        for arr, key in ((cls_mask, "SegmentationClass"), (inst_mask, "SegmentationObject"),
                         (part_mask, "SegmentationPart")):
            img = Image.fromarray(arr, mode="P")
            img.putpalette(palette)
            img.save(dirs[key] / f"{image_id}.png")
        (dirs["Annotations"] / f"{image_id}.xml").write_bytes(_annotation_xml(image_id, size, instances, classes))
        backgrounds[image_id] = tex

    n_heldout = int(round(n * heldout_fraction)) if version == 2 else 0
    prefix = "tb" if version == 1 else "tb2"
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        image_id = f"{prefix}_{seed:04d}_{i:05d}"
        write(image_id, make_sample(rng, size) if version == 1 else make_sample_v2(rng, size))
        ids.append(image_id)
        if progress is not None:
            progress(i + 1, n + n_heldout)
    order = np.random.default_rng(seed + 1).permutation(n)
    n_val = int(round(n * val_fraction))
    val = sorted(ids[j] for j in order[:n_val])
    train = sorted(ids[j] for j in order[n_val:])
    (dirs["ImageSets/Segmentation"] / "train.txt").write_text("\n".join(train) + "\n")
    (dirs["ImageSets/Segmentation"] / "val.txt").write_text("\n".join(val) + "\n")
    if n_heldout:
        held_rng = np.random.default_rng([seed, 2])
        held = []
        for i in range(n_heldout):
            image_id = f"{prefix}_{seed:04d}_h{i:05d}"
            write(image_id, make_sample_v2(held_rng, size, heldout=True))
            held.append(image_id)
            if progress is not None:
                progress(n + i + 1, n + n_heldout)
        (dirs["ImageSets/Segmentation"] / "heldout.txt").write_text("\n".join(held) + "\n")
    (out / "labels.txt").write_text("\n".join(classes) + "\n")
    info = TestbedInfo(str(out), n, seed, len(train), len(val), version, n_heldout)
    meta = {"generator": "cam_core.testbed", "version": version, "info": asdict(info), "classes": list(classes),
            "size": size}
    if version == 1:
        meta.update({
            "bodies": {c: BODIES[i // 2] for i, c in enumerate(CLASSES)},
            "parts": {c: PARTS[i][0] for i, c in enumerate(CLASSES)},
            "water_classes": [CLASSES[i] for i in WATER_CLASSES],
            "water_probability": {"with_water_class": WATER_PROB_WITH, "otherwise": WATER_PROB_WITHOUT},
        })
    else:
        meta.update({
            "bodies": "any of " + ", ".join(BODIES) + " for every class, colour from one palette",
            "body_radii": BODY_RADII_V2, "part_radius": PART_RADIUS_V2,
            "decoys": {"probabilities of 0, 1, 2 per image": DECOYS_V2,
                       "what": "part-less bodies (shapes and colours as the objects'), background in every mask"},
            "water_classes": [CLASSES_V2[i] for i in WATER_CLASSES_V2],
            "water_probability": {"with_water_class": WATER_PROB_WITH_V2, "otherwise": WATER_PROB_WITHOUT_V2},
            "heldout": "backgrounds flipped: images with a water class on other textures, the rest on water",
            "backgrounds": backgrounds,
        })
    (out / "testbed.json").write_text(json.dumps(meta, indent=2))
    return info
