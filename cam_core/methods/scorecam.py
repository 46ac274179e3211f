"""Score-CAM (Wang et al., CVPR-W 2020) as the paper and its official code define it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import NEEDS_FORWARDS, Cancelled, MethodContext, MethodError, MethodOutput, MethodSpec, Param, register


# Masked images per forward when batch_size = 0 (see bench/bench_scorecam_batch.py).
AUTO_BATCH = {"cpu": 4, "cuda": 64}


@dataclass
class _Resumable:
    """Scores of the finished batches of one (class, score, channel set) on one forward pass,
    so that a run interrupted by the UI (a rerun, a cancel) resumes where it stopped."""

    scores: torch.Tensor
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def channel_scores(ctx: MethodContext, target: int, channels: torch.Tensor, batch_size: int,
                   score: str = "softmax") -> torch.Tensor:
    """softmax(model(X * H_k))[target] for each channel k, H_k the channel upsampled to the
    input size and min-max normalised (score='sigmoid': the class's own sigmoid, for
    multi-label heads). Batched; between batches: progress, cancel, and a pause while other
    callers' interactive work runs."""
    if score not in ("softmax", "sigmoid"):
        raise MethodError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    acts, x = ctx.activations, ctx.fwd.input
    size = x.shape[-2:]
    model = ctx.backbone.batch_model()  # BatchNorm folded: same logits, less time (folding.py)
    total = len(channels)
    key = ("scorecam-progress", target, score, hash(tuple(channels.tolist())))
    state = ctx.fwd.memo(key, lambda: _Resumable(torch.zeros(total, device=acts.device)))
    if batch_size <= 0:
        batch_size = AUTO_BATCH["cuda" if acts.device.type == "cuda" else "cpu"]
    with state.lock:
        start = state.done
        while start < total:
            try:
                ctx.checkpoint()
            except Cancelled:
                raise Cancelled("Score-CAM cancelled") from None
            # one masked image at a time while other sessions work: they wait less for it
            step = 1 if ctx.contended is not None and ctx.contended() else batch_size
            idx = channels[start : start + step]
            up = F.interpolate(acts[idx].unsqueeze(0).float(), size=size, mode="bilinear", align_corners=False)[0]
            lo = up.amin(dim=(1, 2), keepdim=True)
            hi = up.amax(dim=(1, 2), keepdim=True)
            masks = (up - lo) / (hi - lo).clamp_min(torch.finfo(up.dtype).tiny)
            with torch.inference_mode():
                logits = model(x * masks.unsqueeze(1).to(x.dtype))
            probs = logits.float().softmax(dim=-1) if score == "softmax" else logits.float().sigmoid()
            state.scores[start : start + len(idx)] = probs[:, target]
            start += len(idx)
            state.done = start
            if ctx.progress is not None:
                ctx.progress(start, total)
        ctx.fwd.forget(key)  # finished: the map itself is cached by the engine
        return state.scores


def _varying_channels(acts: torch.Tensor) -> torch.Tensor:
    # The official code skips channels whose upsampled map is constant (min == max); bilinear
    # upsampling keeps a map constant iff it was, so the test runs on the small map.
    flat = acts.reshape(acts.shape[0], -1)
    return (flat.amax(dim=1) > flat.amin(dim=1)).nonzero().squeeze(1)


def _combine(ctx, scores: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    acts = ctx.activations
    low = torch.einsum("c,chw->hw", scores, acts[channels].float())
    # The paper sums the UPSAMPLED channels then applies ReLU: upsampling is linear, so
    # upsampling the sum is the same and 1000x cheaper.
    up = F.interpolate(low[None, None], size=ctx.fwd.input.shape[-2:], mode="bilinear", align_corners=False)
    return torch.relu(up[0, 0])


def scorecam(ctx: MethodContext, target: int, batch_size: int = 0, score: str = "softmax") -> MethodOutput:
    channels = _varying_channels(ctx.activations)
    total = ctx.activations.shape[0]
    note = f"{len(channels)} of {total} channels vary and were scored (constant ones skipped, as the official code)"
    return MethodOutput(_combine(ctx, channel_scores(ctx, target, channels, batch_size, score), channels), note=note)


def scorecam_topn(ctx: MethodContext, target: int, channels: int = 128, batch_size: int = 0,
                  score: str = "softmax") -> MethodOutput:
    """The N channels of highest activation energy (sum of squares) only: an approximation."""
    varying = _varying_channels(ctx.activations)
    energy = ctx.activations[varying].float().pow(2).sum(dim=(1, 2))
    chosen = varying[energy.topk(min(channels, len(varying))).indices]
    note = f"the {len(chosen)} highest-energy of {len(varying)} varying channels scored (an approximation)"
    return MethodOutput(_combine(ctx, channel_scores(ctx, target, chosen, batch_size, score), chosen), note=note)


_BATCH = Param("batch_size", 0, f"Masked images per forward pass (0 = automatic: {AUTO_BATCH['cpu']} on CPU, {AUTO_BATCH['cuda']} on GPU).", 0, 512, 1)
# A multi-label (sigmoid-trained) head saturates the softmax: on the testbed's two-class images
# the second class gets p ~ 0 for every masked input, so every weight is ~0.
_SCORE = Param("score", "softmax", "softmax: the paper's class probability. sigmoid: the class's own "
               "probability, for multi-label heads such as the testbed models'.", choices=("softmax", "sigmoid"))
register(MethodSpec(
    "scorecam", "Score-CAM", scorecam,
    "Each channel, upsampled and min-max normalised, masks the input; its weight is the softmax "
    "probability of the class for the masked image (constant channels skipped, as in the official code).",
    frozenset({NEEDS_FORWARDS}), (_BATCH, _SCORE), reference="Wang et al., CVPR-W 2020",
))
register(MethodSpec(
    "scorecam_topn", "Score-CAM (top-N channels)", scorecam_topn,
    "Score-CAM restricted to the N channels of highest activation energy: faster, approximate.",
    frozenset({NEEDS_FORWARDS}),
    (Param("channels", 128, "How many channels (highest energy first) to score.", 1, 4096, 1), _BATCH, _SCORE),
    approximate=True, reference="Wang et al., CVPR-W 2020 (channel subset)",
))
