"""Vision-transformer methods that read the attention maps: TS-CAM and attention rollout."""

from __future__ import annotations

import torch

from .base import NEEDS_ATTENTION, NEEDS_HEAD, MethodContext, MethodError, MethodOutput, MethodSpec, register


def _attentions(ctx) -> torch.Tensor:
    atts = ctx.fwd.attentions
    if not atts:
        raise MethodError(f"{ctx.backbone.name} gave no attention maps (not a ViT with timm attention blocks)")
    return ctx.backbone.attentions_in_frame([a.float() for a in atts])  # L x heads x N x N


def _token_row(ctx, matrix: torch.Tensor) -> torch.Tensor:
    """The class token's row to the patch tokens (N x N matrix), or, for a model without a
    class token, the mean over tokens; put on the model's patch grid (h x w)."""
    bb = ctx.backbone
    p = bb.num_prefix_tokens
    row = matrix[0] if p > 0 else matrix.mean(dim=0)  # N: prefix entries dropped by to_spatial
    return bb.to_spatial(row[None, :, None])[0]


def tscam(ctx: MethodContext, target: int) -> MethodOutput:
    """Gao et al., ICCV 2021 (official vasgaowei/TS-CAM, lib/models/deit.py): the attention of
    every block, averaged over heads, SUMMED over blocks, class-token row to the patches
    (semantic-agnostic map), times the class's semantic map (the TS-CAM head's map; for a
    linear head the classifier applied to every patch token)."""
    attention = _attentions(ctx).mean(dim=1).sum(dim=0)  # N x N
    agnostic = _token_row(ctx, attention)
    semantic = ctx.backbone.class_maps(ctx.fwd.head_features, target)
    return MethodOutput(agnostic * semantic)


def rollout(ctx: MethodContext, target: int) -> MethodOutput:
    """Abnar & Zuidema 2020: per block, the head-averaged attention with the residual added
    (0.5 A + 0.5 I, rows renormalised), multiplied through the blocks; class-token row."""
    attention = _attentions(ctx).mean(dim=1)  # L x N x N
    n = attention.shape[-1]
    eye = torch.eye(n, device=attention.device)
    joint = eye
    for a in attention:
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a @ joint
    return MethodOutput(_token_row(ctx, joint))


register(MethodSpec(
    "tscam", "TS-CAM", tscam,
    "Attention of the class token to the patches, summed over blocks (averaged over heads), "
    "times the class's semantic map from the head.",
    frozenset({NEEDS_ATTENTION, NEEDS_HEAD}), kinds=("vit",),
    reference="Gao et al., ICCV 2021",
))
register(MethodSpec(
    "rollout", "Attention rollout", rollout,
    "Attention with the residual path, multiplied through the blocks; the class token's row "
    "(class-agnostic).",
    frozenset({NEEDS_ATTENTION}), class_specific=False, kinds=("vit",),
    reference="Abnar & Zuidema, ACL 2020",
))
