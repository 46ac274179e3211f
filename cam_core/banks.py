"""Dataset-level prototype banks: the bank a backbone's LPCAM uses by default, built once from
the dataset the backbone declares and cached on disk.

LPCAM clusters a class's pixels over a whole training set (Chen et al., CVPR 2023). A
backbone that knows its training data says so (``Backbone.default_bank``, a
:class:`DatasetBank`; the testbed's models name the generator run of their card), and
:func:`dataset_bank` builds the bank from that split on first use (with progress and
cancel), saves it under :func:`cache_dir`, and loads it afterwards. The file's name holds a
key of everything the bank depends on: the model's weights (a digest of its state dict), the
layer, the preprocessing, the bank's parameters and the data (a digest of the split's images
and masks), so a change to any of them builds a new bank. A cache file that cannot be read is
rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbones import FEATURES, Backbone
from .prototypes import BANK_FORMAT, PrototypeBank, build_bank

CACHE_ENV = "CAM_EXPLORER_CACHE"
BUILD_VERSION = 1  # bump when build_bank's output changes for the same inputs
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """CAM_EXPLORER_CACHE, else the user's cache folder (XDG_CACHE_HOME or ~/.cache on Linux,
    ~/Library/Caches on macOS, LOCALAPPDATA on Windows) / cam_explorer. Never the package."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cam_explorer"


@dataclass(frozen=True)
class DatasetBank:
    """Where a backbone's default LPCAM bank comes from: one split of a VOC-layout folder,
    each image labelled by the classes in its segmentation mask (image-level labels, as the
    paper's training set). ``root`` is the folder; or ``generate(folder, progress)`` writes
    it on first use into the cache under ``data_id`` (the testbed's deterministic generator)."""

    name: str  # shown to the user, e.g. "testbed train split"
    split: str = "train"
    root: Path | None = None
    generate: Callable[..., object] | None = None
    data_id: str = ""
    max_per_class: int = 20_000

    def folder(self, progress: Callable[[int, int], None] | None = None) -> Path:
        """The dataset's folder, generated first if it is the cache's and missing. A generation
        goes to a temporary folder renamed when complete, so an interrupted one is redone."""
        if self.root is not None:
            return Path(self.root)
        if self.generate is None or not self.data_id:
            raise ValueError(f"dataset bank {self.name!r} has neither a root nor a generator")
        folder = cache_dir() / "datasets" / self.data_id
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
            log.info("generating %s into %s", self.data_id, folder)
            self.generate(tmp, progress=progress)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished first: use its copy
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return folder


def split_bank(root: str | Path, split: str = "train") -> DatasetBank:
    """The bank of one split of a VOC-layout folder, as ``cam_core evaluate --bank-from SPLIT``
    and the Evaluate page build it for LPCAM (the paper's bank: the training split's pixels,
    labelled by each image's classes). Named ``FOLDER/SPLIT``; cached as a backbone's own bank,
    under an id of the folder's resolved path (so two folders' banks never replace each other)."""
    root = Path(root).resolve()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return DatasetBank(name=f"{root.name}/{split}", split=split, root=root, data_id=f"{root.name}-{tag}")


def _digest_files(h, paths: list[Path]) -> None:
    for p in paths:
        h.update(f"{p.name}:".encode())
        h.update(p.read_bytes() if p.exists() else b"<missing>")


def data_digest(source: DatasetBank, folder: Path) -> str:
    """Digest of what the bank reads: the split's list, its images and their masks (the labels)."""
    from .voc import VOCDataset

    ds = VOCDataset(folder, source.split)
    h = hashlib.sha256(f"{source.split};{','.join(ds.class_names)};".encode())
    for s in ds:
        _digest_files(h, [s.image_path, s.root / "SegmentationClass" / f"{s.id}.png"])
    return h.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """Digest of the model's state dict (parameters and buffers, names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(backbone: Backbone, source: DatasetBank, data: str) -> str:
    """What a cached bank depends on, hashed: weights, layer, preprocessing, bank parameters, data."""
    settings = {"format": BANK_FORMAT, "build": BUILD_VERSION, "backbone": backbone.name, "layer": FEATURES,
                "input_size": list(backbone.input_size), "mean": list(backbone.mean), "std": list(backbone.std),
                "interpolation": backbone.interpolation, "split": source.split,
                "max_per_class": source.max_per_class, "data": data, "weights": weights_digest(backbone.model)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(backbone: Backbone, source: DatasetBank, key: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{backbone.name}-{source.data_id or 'data'}-{source.split}")
    return cache_dir() / "banks" / f"{stem}-{key}.safetensors"


@dataclass
class CachedBank:
    bank: PrototypeBank
    path: Path
    built: bool  # False: loaded from the cache


def dataset_bank(
    backbone: Backbone,
    source: DatasetBank,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> CachedBank:
    """The bank of `source` for `backbone`: loaded from the cache when its key matches, else
    built (progress(done, total) per image; cancel() stops between batches) and saved."""
    from .voc import VOCDataset

    folder = source.folder(progress)
    key = cache_key(backbone, source, data_digest(source, folder))
    path = cache_path(backbone, source, key)
    if path.exists():
        try:
            bank = PrototypeBank.load(path)
            if bank.meta.get("settings", {}).get("cache_key") != key:
                raise ValueError("its key does not match its name")
            bank.check_fits(backbone)
            return CachedBank(bank, path, built=False)
        except Exception as exc:  # a damaged or foreign file: a cache, so rebuild it
            warnings.warn(f"cached bank {path} cannot be used ({type(exc).__name__}: {exc}); rebuilding it",
                          RuntimeWarning, stacklevel=2)
    items = [(s.image, s.labels) for s in VOCDataset(folder, source.split) if s.labels]
    log.info("building the %s bank of %s from %d images", source.name, backbone.name, len(items))
    bank = build_bank(backbone, items, name=source.name, max_per_class=source.max_per_class,
                      progress=progress, cancel=cancel).bank
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: a reader never sees half a file.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp.safetensors")
    try:
        bank.save(tmp, cache_key=key, dataset=str(folder), split=source.split)
        os.replace(tmp, path)
        for old in path.parent.glob(path.name.removesuffix(f"{key}.safetensors") + "*.safetensors"):
            if old != path and len(old.stem) == len(path.stem):  # the same bank under an older key
                old.unlink(missing_ok=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"cannot cache the bank in {path.parent} ({exc}); it is rebuilt next time",
                      RuntimeWarning, stacklevel=2)
    bank.meta.setdefault("settings", {})["cache_key"] = key
    return CachedBank(bank, path, built=True)
