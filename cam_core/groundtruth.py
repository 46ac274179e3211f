"""Ground truth that comes with an image: found next to it, read from an upload, or typed.

No Streamlit here: the Compare page, the CLI and a notebook use the same functions.

Where the ground truth of an image file ``DIR/STEM.EXT`` is looked for (the first found wins
for each kind; a mask and boxes may both be found):

* a mask ``DIR/STEM_mask.png`` or ``DIR/masks/STEM_mask.png`` (the bundled quokka and plant
  masks are ``assets/samples/masks/*_mask.png``): any image of the picture's size whose
  non-zero pixels are the object (in a palette image, 255 is VOC's void border and is left
  out);
* boxes ``DIR/STEM_annotations.json`` or ``DIR/masks/STEM_annotations.json``, imgaug's format
  (as the bundled quokka_annotations.json): ``{"bounding_boxes": [{"x1": .., "y1": .., "x2":
  .., "y2": .., "label": ..}, ...]}`` in the picture's pixels, corners inclusive, rounded to
  whole pixels; other keys are ignored;
* an image of a VOC-layout folder ``ROOT/JPEGImages/ID.jpg``: ``ROOT/SegmentationClass/ID.png``
  and ``ROOT/Annotations/ID.xml`` (class names from ``ROOT/labels.txt``, else VOC's). With a
  class name that the folder knows, the mask and boxes of that class; otherwise those of every
  object. VOC's void border is kept apart (``ignore``).

A found file that cannot be read is a :class:`GroundTruthError` (a one-line message); none
found is ``None``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .metrics import best_iou, boxes_mask, energy_inside, pointing_game
from .voc import VOID, VOCSample, class_names

Box = tuple[int, int, int, int]
MASK_SUFFIX = "_mask.png"
BOXES_SUFFIX = "_annotations.json"


class GroundTruthError(ValueError):
    """A mask or box that cannot be used with this image; the message is for the user."""


@dataclass(frozen=True)
class GroundTruth:
    """A region of an image of ``size`` (height, width): a boolean mask, boxes (x0, y0, x1, y1,
    inclusive), or both; ``ignore`` marks pixels that count for neither (VOC's void)."""

    size: tuple[int, int]
    mask: np.ndarray | None = None
    boxes: tuple[Box, ...] = ()
    source: str = ""
    ignore: np.ndarray | None = None

    @property
    def region(self) -> np.ndarray:
        """The object's pixels: the mask when there is one, else the union of the boxes."""
        return self.mask if self.mask is not None else boxes_mask(self.boxes, self.size)

    def describe(self) -> str:
        what = (["mask"] if self.mask is not None else []) + ([f"{len(self.boxes)} box(es)"] if self.boxes else [])
        return " + ".join(what) + (f" from {self.source}" if self.source else "")


def read_mask(source: str | Path | bytes, size: tuple[int, int] | None = None, what: str | None = None) -> np.ndarray:
    """A mask image (path or bytes) as a boolean H x W array: non-zero pixels are the object
    (the max over colour channels), a palette image's 255 (VOC's void) is not. With ``size``
    (height, width) it must be the image's size. A file that is no image, has no object
    pixel or has another size is a GroundTruthError naming ``what``."""
    what = what or (f"mask {source}" if isinstance(source, (str, Path)) else "the mask")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            arr = np.asarray(im)
            palette = im.mode == "P"
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"{what}: cannot read it as an image ({getattr(exc, 'strerror', None) or exc})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    mask = (arr > 0) & (arr != 255) if palette else arr > 0
    if not mask.any():
        raise GroundTruthError(f"{what} has no object pixel (every pixel is 0)")
    if size is not None and mask.shape != tuple(size):
        raise GroundTruthError(f"{what} is {mask.shape[1]} x {mask.shape[0]} pixels, the image {size[1]} x {size[0]}")
    return mask


def parse_box(text: str, size: tuple[int, int] | None = None) -> Box:
    """``"X0,Y0,X1,Y1"`` (pixels, inclusive; spaces allowed) as a box; with ``size`` (height,
    width) it must start inside the image (its far corner is clipped to it)."""
    try:
        x0, y0, x1, y1 = (round(float(v)) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise GroundTruthError(f"expected X0,Y0,X1,Y1 (four numbers, pixels), got {text!r}") from None
    if x1 < x0 or y1 < y0 or min(x0, y0) < 0:
        raise GroundTruthError(f"expected 0 <= X0 <= X1 and 0 <= Y0 <= Y1, got {text!r}")
    if size is not None:
        h, w = size
        if x0 >= w or y0 >= h:
            raise GroundTruthError(f"box {x0},{y0},{x1},{y1} lies outside the image ({w} x {h})")
        x1, y1 = min(x1, w - 1), min(y1, h - 1)
    return x0, y0, x1, y1


def read_boxes(path: str | Path) -> tuple[Box, ...]:
    """The boxes of an imgaug-style annotation file (see the module docstring)."""
    try:
        data = json.loads(Path(path).read_text())
        return tuple(tuple(round(float(b[k])) for k in ("x1", "y1", "x2", "y2")) for b in data["bounding_boxes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GroundTruthError(f"{path}: not an annotation file with bounding_boxes x1, y1, x2, y2 ({exc})") from None


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _voc_ground_truth(path: Path, size: tuple[int, int], class_name: str | None) -> GroundTruth | None:
    root = path.parent.parent
    if path.parent.name != "JPEGImages" or not (root / "SegmentationClass" / f"{path.stem}.png").is_file():
        return None
    names = class_names(root)
    sample = VOCSample(path.stem, root, names)
    try:
        gt = sample.mask
        objects = sample.objects
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"{root}: the annotation of {path.stem} cannot be read ({exc})") from None
    if gt.shape != tuple(size):
        raise GroundTruthError(f"{root / 'SegmentationClass' / path.stem}.png is {gt.shape[1]} x {gt.shape[0]} "
                               f"pixels, the image {size[1]} x {size[0]}")
    if class_name in names:
        c = names.index(class_name)
        mask, boxes, what = gt == c + 1, tuple(o.box for o in objects if o.cls == c), class_name
    else:
        mask, boxes, what = (gt > 0) & (gt != VOID), tuple(o.box for o in objects), "every object"
    return GroundTruth(size, mask if mask.any() else None, boxes, f"{root.name} ({what})", gt == VOID)


def _fit(mask: np.ndarray, size: tuple[int, int], path: Path) -> tuple[np.ndarray, float]:
    """A mask of the original picture on its downscaled working copy (images.WORKING_MAX_SIDE):
    resized (nearest) when it is larger with the same aspect ratio, else a GroundTruthError."""
    (mh, mw), (h, w) = mask.shape, size
    scale = h / mh
    if mh > h and abs(w / mw - scale) * max(mh, mw) <= 1.0:
        return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0, scale
    raise GroundTruthError(f"{path.name} is {mw} x {mh} pixels, the image {w} x {h}")


def find_ground_truth(image_path: str | Path, size: tuple[int, int], class_name: str | None = None
                      ) -> GroundTruth | None:
    """The ground truth that comes with the image file at ``image_path`` (see the module
    docstring), for a picture of ``size`` (height, width); None when there is none. A mask of
    the original picture found with its downscaled working copy is resized to it (and the
    boxes scaled alike)."""
    path = Path(image_path)
    voc = _voc_ground_truth(path, size, class_name)
    if voc is not None:
        return voc
    dirs = [path.parent, path.parent / "masks"]
    mask_path = _first([d / f"{path.stem}{MASK_SUFFIX}" for d in dirs])
    boxes_path = _first([d / f"{path.stem}{BOXES_SUFFIX}" for d in dirs])
    if mask_path is None and boxes_path is None:
        return None
    mask, scale = None, 1.0
    if mask_path is not None:
        mask = read_mask(mask_path)
        if mask.shape != tuple(size):
            mask, scale = _fit(mask, size, mask_path)
    boxes = ()
    if boxes_path is not None:
        boxes = tuple(parse_box(",".join(str(v * scale) for v in b), size) for b in read_boxes(boxes_path))
    source = ", ".join(p.name for p in (mask_path, boxes_path) if p is not None)
    return GroundTruth(size, mask, boxes, source)


def ground_truth_scores(m01: np.ndarray, region: np.ndarray, names=("energy", "pointing", "best_iou")) -> dict:
    """The ground-truth metrics asked for, of a map at the region's resolution in [0, 1]
    (min-max normalised): energy (share of the map's energy inside the region), pointing
    (the map's maximum within 15 px of it), best_iou (+ best_iou_threshold) of map >= t."""
    out: dict = {}
    if "energy" in names:
        out["energy"] = round(energy_inside(m01, region), 6)
    if "pointing" in names:
        out["pointing"] = pointing_game(m01, region)
    if "best_iou" in names:
        value, t = best_iou(m01, region)
        out["best_iou"] = round(value, 6)
        out["best_iou_threshold"] = t
    return out


def outline(rgb: np.ndarray, gt: GroundTruth, color=(0, 255, 0), thickness: int = 2) -> np.ndarray:
    """A copy of ``rgb`` (the image at any display size) with the ground truth drawn on it:
    the mask's contour and the boxes' rectangles, scaled from the ground truth's size."""
    out = np.ascontiguousarray(rgb).copy()
    h, w = out.shape[:2]
    sy, sx = h / gt.size[0], w / gt.size[1]
    if gt.mask is not None:
        small = cv2.resize(gt.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        contours = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness)
    for x0, y0, x1, y1 in gt.boxes:
        cv2.rectangle(out, (int(x0 * sx), int(y0 * sy)), (int((x1 + 1) * sx) - 1, int((y1 + 1) * sy) - 1),
                      tuple(int(c) for c in color), thickness)
    return out
