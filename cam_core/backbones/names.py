"""Class names: ImageNet's from timm, or one name a line from a text file."""

from __future__ import annotations

from pathlib import Path

from .backbone import BackboneError


def imagenet_class_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


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
