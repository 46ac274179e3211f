"""The ground-truth testbed: a generated VOC-layout set with planted failure modes, and the
small models trained on it (see generate.py and train.py)."""

from .generate import CLASSES, generate

__all__ = ["CLASSES", "generate"]
