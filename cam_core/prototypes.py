"""LPCAM's prototype bank: per class, the pixel features of its images with their CAM values.

Keeping the raw features (not only the centres) means K, tau and the selection thresholds
can all change without another forward pass: foreground = CAM > tau, context = the rest,
K-means on each, then the classifier picks class and context prototypes (Chen et al.,
CVPR 2023; official code zhaozhengChen/LPCAM, step/make_lpcam.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .backbones import FEATURES, Backbone
from .images import ImageError, LoadedImage, load_image
from .kmeans import KMeansResult, kmeans
from .errors import Cancelled

BANK_FORMAT = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
SELECTION_RULES = ("auto", "softmax", "rank")
# K-means iterates on at most this many points per set, until < 0.5% of them change cluster,
# then assigns every point once (exact member means). On 20,000 real Lite0 features (K = 12)
# the final inertia is within the spread between seeds of full Lloyd runs (+-2%) for caps of
# 1,024 to 3,072, while a K change drops from ~2 s to ~150 ms on the 2-core CPU
# (bench/bench_live.py).
KMEANS_FIT_CAP = 1536
KMEANS_TOL = 0.005
KMEANS_MAX_ITER = 30
AUTO_SOFTMAX_MAX_CLASSES = 100  # VOC (20) and COCO (80) heads: the paper's rule; ImageNet (1000): rank


def resolve_rule(rule: str, num_classes: int) -> str:
    """The selection rule that `rule` applies to a head of `num_classes` classes: 'auto' is the
    paper's softmax rule up to AUTO_SOFTMAX_MAX_CLASSES classes, the rank rule beyond."""
    if rule == "auto":
        return "softmax" if num_classes <= AUTO_SOFTMAX_MAX_CLASSES else "rank"
    return rule


class BankError(ValueError):
    """A bank that cannot be built, loaded or used with this backbone; meant for the user."""


@dataclass
class ClassFeatures:
    features: torch.Tensor  # N x C head-input features of the class's pixels
    cam: torch.Tensor  # N, each pixel's CAM for the class, normalised by its image's max
    image_ids: torch.Tensor  # N, index into PrototypeBank.images

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class Selection:
    """The outcome of clustering one class and letting the classifier choose."""

    class_prototypes: torch.Tensor  # P_f x C (raw centres)
    context_prototypes: torch.Tensor  # P_b x C
    fg: KMeansResult
    bg: KMeansResult | None
    fg_prob: torch.Tensor  # K: p(class | centre) of each foreground centre
    bg_prob: torch.Tensor  # K_b
    fg_selected: torch.Tensor  # bool K
    bg_selected: torch.Tensor  # bool K_b
    n_fg: int
    n_bg: int
    kmeans_ms: float
    note: str = ""


def class_probabilities(centres: torch.Tensor, backbone: Backbone, target: int, use_bias: bool) -> torch.Tensor:
    """softmax(z W^T (+ b))[target] for each centre z: the classifier read as a prototype
    scorer (the official code has no bias in its head; ours may, hence the switch)."""
    return _centre_logits(centres, backbone, use_bias).softmax(dim=-1)[:, target]


def _centre_logits(centres: torch.Tensor, backbone: Backbone, use_bias: bool) -> torch.Tensor:
    logits = centres @ backbone.linear_weight.T.to(centres)
    bias = backbone.linear_bias
    if use_bias and bias is not None:
        logits = logits + bias.to(centres)
    return logits


def class_ranks(centres: torch.Tensor, backbone: Backbone, target: int, use_bias: bool) -> torch.Tensor:
    """1-based rank of the target among all classes for each centre (1 = the top class)."""
    logits = _centre_logits(centres, backbone, use_bias)
    return (logits > logits[:, target : target + 1]).sum(dim=-1) + 1


class PrototypeBank:
    """Pixel features per class, from one image, a folder, or a saved file."""

    def __init__(self, backbone: str, feature_dim: int, name: str = "bank", max_per_class: int = 20_000):
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.name = name
        self.max_per_class = max_per_class
        self.classes: dict[int, ClassFeatures] = {}
        self.images: list[dict] = []  # {"name", "sha256", "class"}
        self.meta: dict = {}
        self._clusters: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self._key: str | None = None

    # ----- pickling (a distributed evaluation ships the bank to its workers) ----------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_clusters"] = OrderedDict()  # a cache, rebuilt where it is used
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ----- identity ----------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Content identity, for caches: which images, for which classes, how many pixels."""
        if self._key is None:
            h = hashlib.sha256(self.backbone.encode())
            for img in self.images:
                h.update(f"{img['sha256']}:{img['class']};".encode())
            for c, cf in sorted(self.classes.items()):
                h.update(f"{c}:{len(cf)};".encode())
            self._key = h.hexdigest()[:16]
        return self._key

    def check_fits(self, backbone: Backbone) -> None:
        if backbone.name != self.backbone:
            raise BankError(f"bank '{self.name}' was built with {self.backbone}, not {backbone.name}")
        dim = backbone.feature_dim
        if dim != self.feature_dim:
            raise BankError(f"bank '{self.name}' holds {self.feature_dim}-d features; {backbone.name} has {dim}")

    @property
    def n_images(self) -> int:
        """Distinct images (`images` has one entry per (image, class): a multi-label image adds its
        pixels to each of its classes)."""
        return len({(img["name"], img["sha256"]) for img in self.images})

    def describe(self, name: Callable[[int], str] = str) -> str:
        """One line: the bank's name, its image count and its classes' pixel counts, each class
        named by name(class id) (e.g. Backbone.short_name)."""
        counts = ", ".join(f"{name(c)}: {len(cf)} px" for c, cf in sorted(self.classes.items())[:6])
        more = "" if len(self.classes) <= 6 else f", … ({len(self.classes)} classes)"
        return f"{self.name}: {self.n_images} images, {counts}{more}"

    # ----- filling -------------------------------------------------------------------------
    def add(self, name: str, sha256: str, target: int, features: torch.Tensor, cam: torch.Tensor) -> None:
        """One image's pixels for `target`: features C x h x w (head input), cam h x w (its
        CAM of the class)."""
        c, h, w = features.shape
        if c != self.feature_dim:
            raise BankError(f"features are {c}-d, the bank holds {self.feature_dim}-d")
        peak = cam.max()
        norm = cam / peak if peak > 0 else torch.zeros_like(cam)
        image_id = len(self.images)
        self.images.append({"name": name, "sha256": sha256, "class": int(target)})
        new = ClassFeatures(
            features=features.reshape(c, h * w).T.float().cpu(),
            cam=norm.reshape(-1).float().cpu(),
            image_ids=torch.full((h * w,), image_id, dtype=torch.long),
        )
        old = self.classes.get(target)
        if old is not None:
            new = ClassFeatures(*(torch.cat([a, b]) for a, b in zip(
                (old.features, old.cam, old.image_ids), (new.features, new.cam, new.image_ids))))
        if len(new) > self.max_per_class:
            # Seeded subsample, so a rebuilt bank is the same bank.
            gen = torch.Generator().manual_seed(len(self.images))
            keep = torch.randperm(len(new), generator=gen)[: self.max_per_class].sort().values
            new = ClassFeatures(new.features[keep], new.cam[keep], new.image_ids[keep])
        self.classes[target] = new
        self._clusters.clear()
        self._key = None

    # ----- prototypes --------------------------------------------------------------------------
    def split(self, target: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        fg, _, bg, _ = self._split(target, tau)
        return fg, bg

    def _split(self, target: int, tau: float):
        """Foreground and context features with their L2-normalised copies, cached per tau
        (the copies cost as much memory traffic as a K-means iteration)."""
        key = ("split", target, round(tau, 6))
        with self._lock:
            if key in self._clusters:
                return self._clusters[key]
        cf = self.classes.get(target)
        if cf is None:
            raise BankError(f"bank '{self.name}' has no images of class {target}")
        mask = cf.cam > tau
        fg, bg = cf.features[mask], cf.features[~mask]
        out = (fg, F.normalize(fg, dim=1), bg, F.normalize(bg, dim=1))
        with self._lock:
            self._clusters[key] = out
        return out

    def clusters(self, target: int, k: int, tau: float, device: torch.device | str = "cpu", seed: int = 0):
        """K-means of the class's foreground and context features (cached per k, tau)."""
        key = (target, k, round(tau, 6), str(device), seed)
        with self._lock:
            if key in self._clusters:
                self._clusters.move_to_end(key)
                return self._clusters[key]
        fg, fg_n, bg, bg_n = self._split(target, tau)
        if len(fg) == 0:
            raise BankError(f"no pixel of class {target} has CAM > tau = {tau:.2f}; lower tau")
        if k > len(fg):
            raise BankError(
                f"K = {k} is larger than the {len(fg)} foreground pixels (CAM > {tau:.2f}) of class {target}; "
                f"choose K <= {len(fg)} or lower tau"
            )
        t0 = time.perf_counter()
        opts = dict(metric="cosine", seed=seed, fit_cap=KMEANS_FIT_CAP, tol=KMEANS_TOL, max_iter=KMEANS_MAX_ITER)
        fg_km = kmeans(fg.to(device), k, normalized=fg_n.to(device), **opts)
        bg_km = kmeans(bg.to(device), min(k, len(bg)), normalized=bg_n.to(device), **opts) if len(bg) else None
        ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            self._clusters[key] = (fg_km, bg_km, ms, len(fg), len(bg))
            while len(self._clusters) > 48:
                self._clusters.popitem(last=False)
        return fg_km, bg_km, ms, len(fg), len(bg)

    def select(
        self,
        backbone: Backbone,
        target: int,
        k: int = 12,
        tau: float = 0.1,
        mu_f: float = 0.9,
        mu_b: float = 0.9,
        mu_low: float = 0.05,
        rule: str = "auto",
        rank: int = 5,
        use_bias: bool = False,
        seed: int = 0,
        context_rank: int = 0,
    ) -> Selection:
        """Cluster, then let the classifier choose. rule='softmax' is the paper's: class
        prototypes have p(c|z) > mu_f, context prototypes mu_low < p(c|z) < mu_b. A 1000-class
        head spreads p over near-synonyms (tabby / tiger cat / Egyptian cat) and gives every
        background centre p < 0.05, so that rule keeps ~nothing there; rule='rank' keeps as class
        prototypes the centres that rank the class within their top `rank` classes and as
        context the others that still rank the class within their top `context_rank` (this
        project's lower bound, the rank rule's mu_low: a centre that hardly relates to the class
        is no context of it; 0 = no bound). rule='auto': softmax for heads of <= 100 classes,
        else rank.
        If no centre qualifies, the best one is kept and the note says so."""
        if rule not in SELECTION_RULES:
            raise BankError(f"selection rule must be one of {SELECTION_RULES}, got {rule!r}")
        rule = resolve_rule(rule, backbone.num_classes)
        fg, bg, ms, n_fg, n_bg = self.clusters(target, k, tau, backbone.device, seed)
        fg_prob = class_probabilities(fg.centers, backbone, target, use_bias)
        bg_prob = class_probabilities(bg.centers, backbone, target, use_bias) if bg else torch.zeros(0)
        if rule == "softmax":
            fg_sel = fg_prob > mu_f
            bg_sel = (bg_prob > mu_low) & (bg_prob < mu_b)
        else:
            fg_sel = class_ranks(fg.centers, backbone, target, use_bias) <= rank
            if bg:
                bg_rank = class_ranks(bg.centers, backbone, target, use_bias)
                bg_sel = (bg_rank > rank) & ((bg_rank <= context_rank) if context_rank > 0 else True)
            else:
                bg_sel = bg_prob > 1
        note = f"{rule} rule" + (f" (context within the top {context_rank}: this project's variant)"
                                 if rule == "rank" and context_rank > 0 else "")
        if not fg_sel.any():
            fg_sel = torch.zeros_like(fg_sel)
            fg_sel[fg_prob.argmax()] = True
            note += (f"; no foreground centre passed it (best p = {float(fg_prob.max()):.3f}), "
                     "the best one is used alone")
        return Selection(
            class_prototypes=fg.centers[fg_sel],
            context_prototypes=bg.centers[bg_sel] if bg else torch.zeros(0, fg.centers.shape[1]),
            fg=fg, bg=bg, fg_prob=fg_prob, bg_prob=bg_prob, fg_selected=fg_sel, bg_selected=bg_sel,
            n_fg=n_fg, n_bg=n_bg, kmeans_ms=ms, note=note,
        )

    # ----- files ---------------------------------------------------------------------------
    def save(self, path: str | Path, **settings) -> Path:
        """safetensors with the features, CAM values and image ids of every class; the JSON
        metadata (backbone, layer, settings such as tau and K, images and their hashes) is
        stored in the file's header."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for c, cf in self.classes.items():
            tensors[f"class_{c}.features"] = cf.features.contiguous()
            tensors[f"class_{c}.cam"] = cf.cam.contiguous()
            tensors[f"class_{c}.image_ids"] = cf.image_ids.contiguous()
        meta = {
            "format": BANK_FORMAT, "name": self.name, "backbone": self.backbone, "layer": "features",
            "feature_dim": self.feature_dim, "max_per_class": self.max_per_class,
            "images": self.images, "settings": {**self.meta.get("settings", {}), **settings},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        save_file(tensors, str(path), metadata={"cam_explorer": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrototypeBank:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise BankError(f"bank file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("cam_explorer", "null"))
            tensors = load_file(str(path))
        except Exception as exc:
            raise BankError(f"cannot read bank {path.name}: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT:
            raise BankError(f"{path.name} is not a CAM Explorer prototype bank (format {BANK_FORMAT})")
        bank = cls(meta["backbone"], int(meta["feature_dim"]), meta.get("name", path.stem), int(meta["max_per_class"]))
        bank.images = list(meta["images"])
        bank.meta = meta
        for key in tensors:
            if key.endswith(".features"):
                c = int(key.split(".")[0].removeprefix("class_"))
                bank.classes[c] = ClassFeatures(
                    tensors[key].float(), tensors[f"class_{c}.cam"].float(), tensors[f"class_{c}.image_ids"].long()
                )
        return bank


def saved_banks(folder: str | Path, backbone: str | None = None) -> list[tuple[Path, dict]]:
    """The banks saved in a folder (headers only are read), newest first, optionally only
    those built with `backbone`. Unreadable files are left out."""
    from safetensors import safe_open

    found = []
    folder = Path(folder)
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("cam_explorer", "null"))
        except Exception:
            continue
        if isinstance(meta, dict) and meta.get("format") == BANK_FORMAT and backbone in (None, meta.get("backbone")):
            found.append((path, meta))
    return sorted(found, key=lambda pm: pm[0].stat().st_mtime, reverse=True)


# ----- building a bank from images -----------------------------------------------------------
def image_bank(fwd, target: int, backbone: Backbone) -> PrototypeBank:
    """The bank of one image: its own pixels for its own CAM (LPCAM's source (a))."""
    feats = fwd.head_features
    cam = torch.relu(backbone.class_maps(feats, target))
    bank = PrototypeBank(backbone.name, feats.shape[0], name="this image", max_per_class=10**9)
    bank.images.append({"name": "this image", "sha256": "", "class": int(target)})
    peak = cam.max()
    norm = cam / peak if peak > 0 else torch.zeros_like(cam)
    bank.classes[target] = ClassFeatures(
        feats.reshape(feats.shape[0], -1).T.float(), norm.reshape(-1).float(),
        torch.zeros(norm.numel(), dtype=torch.long),
    )
    return bank


@dataclass
class FolderItem:
    path: Path
    target: int | None  # None: labelled by the model's top-1 when the bank is built


@dataclass
class FolderScan:
    items: list[FolderItem]
    ignored: list[str] = field(default_factory=list)  # subfolders left out, with the reason


def folder_items(folder: str | Path, class_names: list[str]) -> FolderScan:
    """ImageFolder layout (class = subfolder, matched to a class name, a synonym, or an index
    like '281' or '281_tabby') and/or loose images (labelled later by the model's top-1). In a
    pure ImageFolder layout a subfolder matching no class is an error (a typo, most likely);
    beside loose images such subfolders (e.g. masks/) are left out and listed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BankError(f"{folder} is not a folder")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    loose = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    scan = FolderScan([])
    lookup: dict[str, int] = {}
    for i, name in enumerate(class_names):
        for syn in name.split(","):
            lookup.setdefault(syn.strip().lower().replace(" ", "_"), i)
    unknown = []
    for d in subdirs:
        key = d.name.lower().replace(" ", "_")
        head = key.split("_", 1)[0]
        idx = lookup.get(key)
        if idx is None and head.isdigit() and int(head) < len(class_names):
            idx = int(head)
        if idx is None:
            unknown.append(d.name)
            continue
        scan.items += [FolderItem(p, idx) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if unknown and not loose:
        raise BankError(f"subfolders that match no class name or index: {', '.join(unknown[:5])}")
    scan.ignored = [f"{name}/: not a class name or index" for name in unknown]
    scan.items += [FolderItem(p, None) for p in loose]
    if not scan.items:
        raise BankError(f"{folder} holds no images")
    return scan


@dataclass
class BuildReport:
    bank: PrototypeBank
    skipped: list[str] = field(default_factory=list)  # "name: reason"


BankItem = FolderItem | tuple[LoadedImage | Callable[[], LoadedImage], int | list[int] | None]


class _BankImages(torch.utils.data.Dataset):
    """Decodes and preprocesses the images of a bank, in DataLoader workers when asked, so
    that decoding overlaps the forward passes and no image outlives its batch."""

    def __init__(self, items: list[BankItem], backbone: Backbone):
        self.items, self.backbone = items, backbone

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            if isinstance(item, FolderItem):
                image, target = load_image(item.path), item.target
            else:
                image, target = item
                if callable(image):
                    image = image()
            x = self.backbone.preprocess(image.rgb, device="cpu")[0]
        except ImageError as exc:
            return {"error": str(exc)}
        return {"x": x, "target": target, "name": image.name, "sha256": image.sha256}


def build_bank(
    explainer,
    items: Iterable[BankItem],
    name: str = "bank",
    max_per_class: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    workers: int = 0,
    batch_size: int = 8,
) -> BuildReport:
    """Stream the images (decoded by `workers` DataLoader processes; an item may also be a
    (callable returning the image, target) pair, loaded only then) through the model in
    batches, under inference mode and without the explainer's per-image cache; the CAM of
    each image's class (its folder's, its labels, or the top-1) splits its pixels later. At
    most max_per_class pixels per class are held (seeded subsample). Unreadable images are
    skipped and reported; cancel() stops between batches."""
    items = list(items)
    bb = getattr(explainer, "backbone", explainer)  # an Explainer or a Backbone
    bank = PrototypeBank(bb.name, bb.feature_dim, name, max_per_class)
    report = BuildReport(bank)
    loader = torch.utils.data.DataLoader(_BankImages(items, bb), batch_size=batch_size, num_workers=workers,
                                         collate_fn=list, persistent_workers=False)
    done = 0
    for batch in loader:
        if cancel is not None and cancel():
            raise Cancelled("bank building cancelled")
        good = [b for b in batch if "x" in b]
        report.skipped += [b["error"] for b in batch if "error" in b]
        if good:
            x = torch.stack([b["x"] for b in good]).to(bb.device)
            with torch.inference_mode():
                feats = bb.model.forward_features(x)
                top1 = bb.model.forward_head(feats).argmax(dim=-1).tolist() if any(
                    b["target"] is None for b in good) else None
            for i, b in enumerate(good):
                f = bb.to_spatial(feats[i : i + 1], FEATURES)
                target = b["target"] if b["target"] is not None else top1[i]
                # A multi-label image (a list of classes) gives its pixels to each of its classes,
                # split by that class's CAM, as LPCAM's recipe does on VOC.
                for t in target if isinstance(target, (list, tuple)) else [target]:
                    bank.add(b["name"], b["sha256"], int(t), f, torch.relu(bb.class_maps(f, int(t))))
        done += len(batch)
        if progress is not None:
            progress(done, len(items))
    if not bank.images:
        raise BankError("no readable image: " + "; ".join(report.skipped[:3]))
    return report


def lpcam_map(features: torch.Tensor, selection: Selection) -> torch.Tensor:
    """ReLU(mean cos to class prototypes - mean cos to context prototypes), h x w; without
    context prototypes the plain mean cosine, as the official code does."""
    c, h, w = features.shape
    f = F.normalize(features.reshape(c, -1).float(), dim=0)
    fg = (F.normalize(selection.class_prototypes.to(f), dim=1) @ f).mean(dim=0)
    if len(selection.context_prototypes):
        bg = (F.normalize(selection.context_prototypes.to(f), dim=1) @ f).mean(dim=0)
        fg = torch.relu(fg - bg)
    return fg.reshape(h, w)
