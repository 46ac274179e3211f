"""Reading a PASCAL VOC layout folder (real VOC2012 or the testbed) for evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

from .images import LoadedImage, load_image

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOID = 255


class DatasetError(ValueError):
    """A folder that is not in VOC layout, or a split that does not exist."""


@dataclass(frozen=True)
class VOCObject:
    cls: int  # 0-based class index
    box: tuple[int, int, int, int]  # x1, y1, x2, y2, 0-based inclusive


@dataclass
class VOCSample:
    id: str
    root: Path
    class_names: tuple[str, ...]

    @property
    def image_path(self) -> Path:
        return self.root / "JPEGImages" / f"{self.id}.jpg"

    def image(self) -> LoadedImage:
        return load_image(self.image_path)

    @cached_property
    def mask(self) -> np.ndarray:
        """H x W uint8: 0 background, c + 1 for class c, 255 void (VOC's object borders)."""
        return np.asarray(Image.open(self.root / "SegmentationClass" / f"{self.id}.png"))

    @cached_property
    def parts(self) -> np.ndarray | None:
        """Testbed only: 0 background, 1 body, 2 part."""
        path = self.root / "SegmentationPart" / f"{self.id}.png"
        return np.asarray(Image.open(path)) if path.exists() else None

    @property
    def labels(self) -> list[int]:
        """The image-level labels: every class present in the mask (0-based)."""
        values = np.unique(self.mask)
        return [int(v) - 1 for v in values if 0 < v < VOID]

    @cached_property
    def objects(self) -> list[VOCObject]:
        path = self.root / "Annotations" / f"{self.id}.xml"
        if not path.exists():
            return []
        root = ET.parse(path).getroot()
        out = []
        for obj in root.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in self.class_names:
                continue
            bb = obj.find("bndbox")
            coords = [int(float(bb.findtext(t))) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
            out.append(VOCObject(self.class_names.index(name), tuple(coords)))
        return out

    def boxes(self, cls: int) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects if o.cls == cls]

    def load(self) -> "LoadedSample":
        """This sample with its files read into memory (see LoadedSample)."""
        return LoadedSample(
            id=self.id, class_names=self.class_names, image_bytes=self.image_path.read_bytes(),
            image_name=self.image_path.name, mask=self.mask, parts=self.parts, objects=tuple(self.objects),
        )


@dataclass(frozen=True)
class LoadedSample:
    """A sample whose image file, masks and boxes are in memory: what a worker of a distributed
    evaluation receives, so that it needs no access to the dataset's folder. Same interface
    as VOCSample (id, image(), mask, parts, labels, objects, boxes(cls))."""

    id: str
    class_names: tuple[str, ...]
    image_bytes: bytes
    image_name: str
    mask: np.ndarray
    parts: np.ndarray | None
    objects: tuple[VOCObject, ...]

    def image(self) -> LoadedImage:
        return load_image(self.image_bytes, name=self.image_name)

    @property
    def labels(self) -> list[int]:
        values = np.unique(self.mask)
        return [int(v) - 1 for v in values if 0 < v < VOID]

    def boxes(self, cls: int) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects if o.cls == cls]


def class_names(root: str | Path) -> tuple[str, ...]:
    """A VOC-layout folder's class names: its labels.txt (the testbed writes one), else VOC's 20."""
    labels = Path(root) / "labels.txt"
    if labels.is_file():
        return tuple(n.strip() for n in labels.read_text().splitlines() if n.strip())
    return VOC_CLASSES


class VOCDataset:
    """The samples of one split of a VOC-layout folder. Class names from the folder's
    labels.txt if it has one (the testbed writes it), VOC's 20 classes otherwise."""

    def __init__(self, root: str | Path, split: str = "val"):
        self.root = Path(root)
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        for sub in ("JPEGImages", "SegmentationClass"):
            if not (self.root / sub).is_dir():
                raise DatasetError(f"{self.root} is not in VOC layout: {sub}/ is missing")
        if not split_file.is_file():
            raise DatasetError(f"{self.root} has no split '{split}' (ImageSets/Segmentation/{split}.txt)")
        self.split = split
        self.ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        self.class_names = class_names(self.root)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> VOCSample:
        return VOCSample(self.ids[i], self.root, self.class_names)

    def __iter__(self):
        return (self[i] for i in range(len(self)))
