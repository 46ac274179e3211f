"""Class names: ImageNet's from timm, or one name a line from a text file."""

from __future__ import annotations

import csv
import importlib.util
from functools import lru_cache
from pathlib import Path

from .backbone import BackboneError


def imagenet_class_names() -> list[str]:
    """timm's ImageNet-1k names (ImageNetInfo's descriptions: each synset's WordNet lemmas),
    read from the files timm ships without importing timm (~1.6 s: see efficientnet_lite.py);
    through ImageNetInfo if those files have moved. A new list each call."""
    return list(_imagenet_names())


@lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    spec = importlib.util.find_spec("timm")  # locates the package without running it
    info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" if spec else None
    try:
        synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
        with open(info / "imagenet_synset_to_lemma.txt", encoding="utf-8", newline="") as f:
            lemmas = dict(csv.reader(f, delimiter="\t"))
        return tuple(lemmas[s] for s in synsets)
    except (OSError, TypeError, KeyError, ValueError):
        from timm.data import ImageNetInfo

        data = ImageNetInfo()
        return tuple(data.index_to_description(i) for i in range(data.num_classes()))


def class_names_for(num_classes: int, names_file: str | Path | None = None) -> list[str]:
    """The names in `names_file` (UTF-8, one a line, blank lines skipped; as many as classes),
    else ImageNet's for 1000 classes, else "class i"."""
    if names_file is not None:
        path = Path(names_file)
        if not path.is_file():
            raise BackboneError(f"class names file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BackboneError(f"class names file {path} is not UTF-8 text (byte {exc.start} cannot be "
                                "decoded): save it as UTF-8, one class name a line") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if len(names) != num_classes:
            raise BackboneError(f"class names file {path} has {len(names)} names but the model has {num_classes} classes")
        return names
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]
