"""K-means in torch, on whatever device the features live on.

Cosine K-means as LPCAM uses it (the official code calls kmeans_pytorch with
distance='cosine'): points are assigned to the centre of highest cosine similarity, and a
centre is the plain mean of its members' raw features, so that the classifier can still
score it like a pooled feature. k-means++ initialisation, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class KMeansError(ValueError):
    """Bad K-means input; the message is meant for the user."""


@dataclass(frozen=True)
class KMeansResult:
    centers: torch.Tensor  # K x C, mean of member features (raw, not normalised)
    labels: torch.Tensor  # N, index of each point's centre
    iterations: int
    inertia: float  # sum over points of the distance to their centre (1 - cos, or squared L2)


def _distances(x: torch.Tensor, centers: torch.Tensor, metric: str) -> torch.Tensor:
    """N x K distances: 1 - cos for 'cosine' (x already normalised), squared L2 otherwise."""
    if metric == "cosine":
        return 1.0 - x @ F.normalize(centers, dim=1).T
    return torch.cdist(x, centers).pow_(2)


def _plus_plus(x: torch.Tensor, k: int, metric: str, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=gen, device="cpu").item()
    chosen = [first]
    closest = _distances(x, x[first : first + 1], metric)[:, 0].clamp_min(0)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point coincides with a centre already: take any unused one
            probs = torch.ones(n, device=x.device)
            probs[chosen] = 0
        else:
            probs = closest
        nxt = torch.multinomial(probs.float().cpu(), 1, generator=gen).item()
        chosen.append(nxt)
        closest = torch.minimum(closest, _distances(x, x[nxt : nxt + 1], metric)[:, 0].clamp_min(0))
    return torch.tensor(chosen, device=x.device)


def kmeans(
    features: torch.Tensor,
    k: int,
    metric: str = "cosine",
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> KMeansResult:
    """Cluster N x C features into k groups. Empty clusters are re-seeded with the point
    farthest from its centre; k larger than the number of points is an error."""
    if metric not in ("cosine", "euclidean"):
        raise KMeansError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if features.dim() != 2:
        raise KMeansError(f"features must be N x C, got shape {tuple(features.shape)}")
    n = features.shape[0]
    if k < 1:
        raise KMeansError(f"K must be at least 1, got {k}")
    if k > n:
        raise KMeansError(f"K = {k} is larger than the number of points ({n}); choose K <= {n}")
    raw = features.float()
    x = F.normalize(raw, dim=1) if metric == "cosine" else raw
    gen = torch.Generator().manual_seed(seed)
    centers = raw[_plus_plus(x, k, metric, gen)].clone()
    labels = torch.zeros(n, dtype=torch.long, device=raw.device)
    counts = torch.zeros(k, device=raw.device)
    it = 0
    for it in range(1, max_iter + 1):
        dist = _distances(x, centers, metric)
        new_labels = dist.argmin(dim=1)
        counts = torch.bincount(new_labels, minlength=k).to(raw.dtype)
        sums = torch.zeros_like(centers).index_add_(0, new_labels, raw)
        empty = counts == 0
        if empty.any():
            # Re-seed each empty cluster with the currently worst-served point.
            worst = dist.gather(1, new_labels[:, None])[:, 0].clone()
            for j in empty.nonzero()[:, 0].tolist():
                p = int(worst.argmax())
                worst[p] = -1.0
                new_labels[p] = j
            counts = torch.bincount(new_labels, minlength=k).to(raw.dtype)
            sums = torch.zeros_like(centers).index_add_(0, new_labels, raw)
        new_centers = sums / counts[:, None]
        shift = (new_centers - centers).norm(dim=1).max() / (centers.norm(dim=1).mean() + 1e-12)
        centers = new_centers
        converged = bool((new_labels == labels).all()) and it > 1
        labels = new_labels
        if converged or shift < tol:
            break
    dist = _distances(x, centers, metric)
    inertia = float(dist.gather(1, labels[:, None]).sum())
    return KMeansResult(centers=centers, labels=labels, iterations=it, inertia=inertia)
