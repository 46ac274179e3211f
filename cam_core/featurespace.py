"""The view inside the feature space: pixels, class centres and prototypes in one 2-D map.

All vectors live in the space the classifier reads (the head-input features), L2-normalised:
the pixels of the image (optionally of a larger copy of it, for more points) and of a
prototype bank, the classifier rows of the top classes ("class centres"), LPCAM's class and
context prototypes, and SIPE's prototypes (here the mean head feature of each seed region,
since SIPE's own prototypes live in its concatenated multi-stage space).

The base points (pixels, bank pixels, class centres) are embedded jointly, by PCA or t-SNE
(openTSNE); prototypes are then placed into that embedding (PCA projection, or openTSNE's
transform), so tuning K or a threshold moves prototypes without re-running t-SNE.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled
from .methods.cicam import is_cicam_model

PIXEL = "pixel"
BANK_FG = "bank pixel (foreground)"
BANK_BG = "bank pixel (context)"
CENTRE = "class centre (classifier row)"
LP_CLASS = "LPCAM class prototype"
LP_CONTEXT = "LPCAM context prototype"
SIPE_PROTO = "SIPE prototype (seed-region mean)"
PROTOTYPE_KINDS = (LP_CLASS, LP_CONTEXT, SIPE_PROTO)


@dataclass
class PointCloud:
    vectors: torch.Tensor  # N x C, L2-normalised, float32, CPU
    kinds: list[str]
    labels: list[str]
    rows: np.ndarray  # pixel row on `grid` (-1 for anything that is not a pixel of the image)
    cols: np.ndarray
    grid: tuple[int, int]
    key: str = ""  # identity of the point set, for caching its embedding

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def indices(self, kind: str) -> np.ndarray:
        return np.array([i for i, k in enumerate(self.kinds) if k == kind], dtype=int)


def _key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def base_cloud(
    fwd,
    centres: list[int],
    scale: float = 1.0,
    bank=None,
    bank_class: int | None = None,
    tau: float = 0.1,
    cap: int = 5000,
    seed: int = 0,
) -> PointCloud:
    """Pixels of the image (head features of the input resized by `scale`), pixels of the
    bank's class (split at tau), the classifier rows of `centres`. Pixels beyond `cap` are
    subsampled (seeded), the image's own first."""
    bb = fwd.backbone
    feats = fwd.head_features if scale == 1.0 else fwd.features_at(scale)
    c, h, w = feats.shape
    pix = feats.reshape(c, -1).T.float().cpu()
    rr, cc = np.divmod(np.arange(h * w), w)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.arange(len(pix))
    if len(pix) > cap:
        keep = torch.randperm(len(pix), generator=gen)[:cap].sort().values
    vectors = [pix[keep]]
    kinds = [PIXEL] * len(keep)
    labels = [f"pixel ({int(rr[i])}, {int(cc[i])})" for i in keep.tolist()]
    rows, cols = [rr[keep.numpy()]], [cc[keep.numpy()]]
    room = cap - len(keep)
    if bank is not None and bank_class in getattr(bank, "classes", {}) and room > 0:
        fg, bg = bank.split(bank_class, tau)
        for part, kind in ((fg, BANK_FG), (bg, BANK_BG)):
            take = min(len(part), room // 2 if kind == BANK_FG else room)
            if take <= 0:
                continue
            idx = torch.randperm(len(part), generator=gen)[:take]
            vectors.append(part[idx].float().cpu())
            kinds += [kind] * take
            labels += [f"{kind} #{int(i)}" for i in idx.tolist()]
            rows.append(np.full(take, -1))
            cols.append(np.full(take, -1))
            room -= take
    weight = bb.linear_weight[centres].detach().float().cpu()
    vectors.append(weight)
    kinds += [CENTRE] * len(centres)
    labels += [f"centre: {bb.short_name(i)} ({i})" for i in centres]
    rows.append(np.full(len(centres), -1))
    cols.append(np.full(len(centres), -1))
    key = _key(fwd.input.shape, float(fwd.logits.sum()), scale, tuple(centres), cap, seed,
               getattr(bank, "key", None), bank_class, round(tau, 6) if bank is not None else None)
    return PointCloud(F.normalize(torch.cat(vectors), dim=1), kinds, labels, np.concatenate(rows),
                      np.concatenate(cols), (h, w), key)


def prototype_cloud(lpcam=None, sipe=None, fwd=None) -> PointCloud:
    """LPCAM's selected class/context prototypes and SIPE's seed-region means (head space)."""
    vectors, kinds, labels = [], [], []
    sel = lpcam.extras.get("selection") if lpcam is not None else None  # None: an empty LPCAM map
    if sel is not None:
        for i in sel.fg_selected.nonzero()[:, 0].tolist():
            vectors.append(sel.fg.centers[i])
            kinds.append(LP_CLASS)
            labels.append(f"class prototype {i} (p = {float(sel.fg_prob[i]):.2f})")
        if sel.bg is not None:
            for i in sel.bg_selected.nonzero()[:, 0].tolist():
                vectors.append(sel.bg.centers[i])
                kinds.append(LP_CONTEXT)
                labels.append(f"context prototype {i} (p = {float(sel.bg_prob[i]):.3f})")
    if sipe is not None and fwd is not None:
        feats = fwd.head_features
        seeds = sipe.extras["seeds"].float()[None, None]
        seeds = F.interpolate(seeds, size=feats.shape[-2:], mode="nearest")[0, 0].long().reshape(-1)
        flat = feats.reshape(feats.shape[0], -1)
        for j, name in enumerate(sipe.extras["labels"]):
            members = seeds == j
            if members.any():
                vectors.append(flat[:, members].mean(dim=1))
                kinds.append(SIPE_PROTO)
                labels.append(f"SIPE: {name if j == 0 else fwd.backbone.short_name(name)}")  # 0: background
    if not vectors:
        return PointCloud(torch.zeros(0, 1), [], [], np.zeros(0, int), np.zeros(0, int), (0, 0), "")
    v = F.normalize(torch.stack([x.float().cpu() for x in vectors]), dim=1)
    return PointCloud(v, kinds, labels, np.full(len(v), -1), np.full(len(v), -1), (0, 0),
                      _key(v.numpy().round(5).tobytes()))


@dataclass
class Embedding:
    coords: np.ndarray  # N x 2 of the base cloud
    method: str
    seconds: float
    _pca: tuple | None = field(default=None, repr=False)  # (mean, components 2 x C)
    _tsne: object = field(default=None, repr=False)

    def place(self, vectors: torch.Tensor) -> np.ndarray:
        """Positions of new vectors in this embedding, the base points staying where they are."""
        if len(vectors) == 0:
            return np.zeros((0, 2))
        x = vectors.float().cpu().numpy()
        if self._pca is not None:
            mean, comps = self._pca
            return (x - mean) @ comps.T
        return np.asarray(self._tsne.transform(x))


def embed(
    cloud: PointCloud,
    method: str = "pca",
    perplexity: float = 30.0,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Embedding:
    """PCA (instant) or t-SNE (openTSNE, with progress and cancel) of the base cloud."""
    import time

    t0 = time.perf_counter()
    x = cloud.vectors.numpy().astype(np.float64)
    if method == "pca":
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:2]
        return Embedding((x - mean) @ comps.T, "pca", time.perf_counter() - t0, _pca=(mean, comps))
    if method != "tsne":
        raise ValueError(f"embedding method must be 'pca' or 'tsne', got {method!r}")
    import openTSNE

    n = len(x)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    perplexity = float(min(perplexity, (n - 1) / 3))
    steps = {"done": 0}
    total = (250 + 500) // 50  # openTSNE's two phases, a callback every 50 iterations

    def callback(iteration, error, embedding):
        steps["done"] += 1
        if progress is not None:
            progress(min(1.0, steps["done"] / total))
        if cancel is not None and cancel():
            raise Cancelled("t-SNE cancelled")
        return False

    tsne = openTSNE.TSNE(perplexity=perplexity, n_jobs=2, random_state=seed, callbacks=callback,
                         callbacks_every_iters=50, metric="cosine", verbose=False)
    emb = tsne.fit(x.astype(np.float32))
    # openTSNE keeps the callbacks on the embedding and runs them again in every transform():
    # place() would report progress (and check cancel) of this fit long after it ended.
    emb.gradient_descent_params["callbacks"] = None
    return Embedding(np.asarray(emb), "tsne", time.perf_counter() - t0, _tsne=emb)


def similarity_map(vector: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine of every pixel (C x h x w) to one vector: h x w."""
    c, h, w = features.shape
    f = F.normalize(features.reshape(c, -1).float(), dim=0)
    return (F.normalize(vector.float().to(f.device), dim=0) @ f).reshape(h, w)


def spread_labels(points: np.ndarray, widths: np.ndarray, height: float, dx: float = 0.0) -> np.ndarray:
    """Where to put one text box per point so that no two boxes overlap: (left x, middle y)
    of each box, in the points' units. A box starts `dx` right of its point, at the point's
    height; boxes are placed lowest first, each moved up just enough to clear the boxes already
    placed that it overlaps horizontally (widths[i] wide, `height` tall)."""
    pos = np.asarray(points, dtype=np.float64).copy()
    widths = np.asarray(widths, dtype=np.float64)
    pos[:, 0] += dx
    placed: list[int] = []
    for i in np.argsort(pos[:, 1], kind="stable"):
        moved = True
        while moved:  # y only grows, to one of finitely many values: this ends
            moved = False
            for j in placed:
                overlaps_x = pos[i, 0] < pos[j, 0] + widths[j] and pos[j, 0] < pos[i, 0] + widths[i]
                if overlaps_x and abs(pos[i, 1] - pos[j, 1]) < height * (1 - 1e-9):
                    pos[i, 1] = pos[j, 1] + height
                    moved = True
        placed.append(int(i))
    return pos


# ----- CI-CAM's class-CAM dictionary ------------------------------------------------------------
@dataclass
class DictionaryView:
    """What CI-CAM's class-CAM dictionary does to one image (cam_core/testbed/cicam.py). All
    tensors on the CPU, float32. The grid is the feature grid of the forward pass (20 x 20 for
    160 px on the testbed): at another input size the entry is resized to it, as the model does."""

    entries: torch.Tensor  # K x h0 x w0: the dictionary, one standardised class CAM per class
    top1: int  # the up branch's top-1 class: the entry the attention was made from
    up_probs: torch.Tensor  # K: sigmoid of the up branch's logits (the testbed is multi-label)
    down_top1: int  # the network's own prediction (the down branch's top-1)
    entry_used: torch.Tensor  # h x w: entries[top1] on the feature grid
    attention_norm: torch.Tensor  # h x w: ||A||_2 over the C channels at each pixel
    change_share: torch.Tensor  # h x w: ||A * F|| / ||F|| at each pixel (how much F' = F + A F moved)
    overall_share: float  # ||A * F|| / ||F|| over the whole grid

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.attention_norm.shape)


def is_cicam(backbone) -> bool:
    return is_cicam_model(getattr(backbone, "model", None))


def dictionary_view(fwd) -> DictionaryView:
    """CI-CAM's dictionary and its attention for the image of `fwd` (an Explainer's ForwardPass
    of a CI-CAM backbone), cached in the forward pass. Reuses the forward: F, the up branch's
    input, is the last ResNet stage run on the kept output of the one before it (the backbone's
    features are the down branch's F' = F + A F); the attention A is made as the model makes
    it. Leaves nothing on the model (no hook, no flag, no buffer touched). Raises MethodError
    for a backbone that is not a CI-CAM network."""
    from .errors import MethodError

    bb = fwd.backbone
    if not is_cicam(bb):
        raise MethodError(f"{bb.name} is not a CI-CAM network: it has no class-CAM dictionary "
                          "(the backbones testbed2-ci-cam and testbed2-kd-ci-cam have one)")
    return fwd.memo(("cicam_dictionary",), lambda: _dictionary_view(fwd))


def _dictionary_view(fwd) -> DictionaryView:
    model = fwd.backbone.model
    with torch.inference_mode():
        before = fwd.stages.get("backbone.layer3")
        if before is not None and hasattr(model.backbone, "layer4"):
            f = model.backbone.layer4(before[None])  # F, from the forward pass's stage 3
        else:
            f = model.base_features(fwd.input)
        up_logits = model.up_classifier(f.mean(dim=(2, 3)))[0]
        top1 = int(up_logits.argmax())
        size = tuple(f.shape[-2:])
        a = model.attention(torch.tensor([top1], device=f.device), size)[0]
        change = a * f[0]
        entry = model.dictionary[top1]
        if tuple(entry.shape) != size:
            entry = F.interpolate(entry[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        f_norm = f[0].norm(dim=0)
        return DictionaryView(
            entries=model.dictionary.detach().float().cpu().clone(),
            top1=top1,
            up_probs=up_logits.float().sigmoid().cpu(),
            down_top1=int(fwd.logits.argmax()),
            entry_used=entry.float().cpu(),
            attention_norm=a.norm(dim=0).float().cpu(),
            change_share=(change.norm(dim=0) / f_norm.clamp_min(1e-12)).float().cpu(),
            overall_share=float(change.norm() / f[0].norm().clamp_min(1e-12)),
        )
