"""LPCAM (Chen et al., CVPR 2023): class and context prototypes from K-means of pixel features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prototypes import AUTO_SOFTMAX_MAX_CLASSES, image_bank, lpcam_map, resolve_rule
from .base import NEEDS_BANK, NEEDS_HEAD, NEEDS_LINEAR_HEAD, MethodContext, MethodOutput, MethodSpec, Param, register

SCALES = (1.0, 0.5, 1.5, 2.0)  # the official inference scales, each with its mirror image
# The rank rule's lower bound for context prototypes (this project's variant of mu_low).
# bench/bench_masks.py, Lite0, quokka / plant masks, best IoU (energy): no bound .761 (.573) /
# .777 (.797); 10: .526 / .734; 50: .773 / .814; 200: .775 (.560) / .814 (.830). Two images
# only: a weak measurement, stated as such in the README.
CONTEXT_RANK = 200


def lpcam(ctx: MethodContext, target: int, k: int = 12, tau: float = 0.1, mu_f: float = 0.9, mu_b: float = 0.9,
          mu_low: float = 0.05, rule: str = "auto", rank: int = 5, context_rank: int = CONTEXT_RANK,
          use_bias: bool = False, multiscale: bool = True, source: str = "bank") -> MethodOutput:
    bb = ctx.backbone
    bank = None
    if source == "bank":
        bank = ctx.bank if ctx.bank is not None or ctx.default_bank is None else ctx.default_bank()
    own = bank is None or target not in bank.classes
    if own:
        origin = "this image's pixels" if bank is None else f"this image's pixels ({bank.name} has no class {target})"
        bank = ctx.fwd.memo(("image_bank", target), lambda: image_bank(ctx.fwd, target, bb))
        if not bool((bank.classes[target].cam > tau).any()):
            # The class is not activated anywhere in this image (its CAM is <= 0): no pixel to
            # cluster, so no prototype and an empty map, as CAM's own (an evaluation over a
            # dataset meets such images; a bank without such pixels is an error, below).
            return MethodOutput(torch.zeros_like(ctx.fwd.head_features[0]), {"bank": origin, "bank_images": 1},
                                f"bank: {origin}: no pixel of class {target} has CAM > tau {tau:g} in this image, "
                                "so there is no prototype: an empty map",
                                label="LPCAM (this image's pixels)", approximate=True)
    else:
        origin = bank.name
    sel = bank.select(bb, target, k, tau, mu_f, mu_b, mu_low, rule, rank, use_bias, context_rank=context_rank)
    fixed = bb.fixed_input_size  # a ViT built for one input size keeps it
    multiscale = multiscale and not fixed
    if not multiscale:
        out = lpcam_map(ctx.fwd.head_features, sel)
    else:
        # As the official make_lpcam: features of the image plus those of its mirror image
        # (mirrored back), per scale; maps resized to the input and averaged.
        size = ctx.fwd.input.shape[-2:]
        maps = []
        for s in SCALES:
            feats = ctx.fwd.features_at(s, False) + ctx.fwd.features_at(s, True)
            m = lpcam_map(feats, sel)
            maps.append(F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0])
        out = torch.stack(maps).mean(dim=0)
    n_images = bank.n_images
    note = (f"bank: {origin} ({n_images} image{'s' if n_images != 1 else ''}, {sel.n_fg} foreground and "
            f"{sel.n_bg} context pixels at tau {tau:g}); {sel.note}; {int(sel.fg_selected.sum())}/{len(sel.fg_prob)} "
            f"class and {int(sel.bg_selected.sum())}/{len(sel.bg_prob)} context prototypes; "
            + ("4 scales x (image + mirror), as the official code" if multiscale else
               "1 scale" + ("; this ViT takes one input size, the official code uses 4 scales + mirrors"
                            if fixed else " (the official code: 4 scales + mirrors)")))
    # The paper clusters a class's pixels over a whole training set: one image's are a stand-in.
    return MethodOutput(out, {"selection": sel, "bank": origin, "bank_images": n_images,
                              "bank_pixels": (sel.n_fg, sel.n_bg)}, note,
                        label="LPCAM (this image's pixels)" if own else None, approximate=own)


RULE_PARAMS = {"softmax": ("mu_f", "mu_b", "mu_low"), "rank": ("rank", "context_rank")}


def idle_lpcam_params(values: dict, backbone) -> dict[str, str]:
    """The other rule's parameters, with why: under the rank rule mu_f, mu_b and mu_low do
    nothing; under the softmax rule rank and context_rank do nothing."""
    n = backbone.num_classes
    rule = resolve_rule(values["rule"], n)
    other = "rank" if rule == "softmax" else "softmax"
    why = (f"rule=auto applies the {rule} rule to this {n}-class head (softmax up to "
           f"{AUTO_SOFTMAX_MAX_CLASSES} classes, rank beyond)" if values["rule"] == "auto" else f"rule={rule} is chosen")
    return {name: f"a parameter of the {other} rule, and {why}" for name in RULE_PARAMS[other]}


register(MethodSpec(
    "lpcam", "LPCAM", lpcam,
    "Cosine similarity to the class's local prototypes (K-means centres of its foreground pixel "
    "features chosen by the classifier) minus that to its context prototypes.",
    frozenset({NEEDS_HEAD, NEEDS_LINEAR_HEAD, NEEDS_BANK}),
    (
        Param("k", 12, "K of K-means, for the foreground and the context features (12 on VOC).", 1, 64, 1),
        Param("tau", 0.1, "Pixels with normalised CAM > tau are foreground (0.1 on VOC).", 0.0, 0.95, 0.01),
        Param("mu_f", 0.9, "softmax rule: class prototypes need p(class|centre) > mu_f.", 0.0, 1.0, 0.01),
        Param("mu_b", 0.9, "softmax rule: context prototypes need p(class|centre) < mu_b.", 0.0, 1.0, 0.01),
        Param("mu_low", 0.05, "Context prototypes need p(class|centre) > mu_low.", 0.0, 1.0, 0.01),
        Param("rule", "auto", "softmax: the paper's thresholds mu_f, mu_b, mu_low. rank: class prototypes "
              "rank the class within their top N classes, the other context centres are context (for "
              "1000-class heads, whose softmax spreads over near-synonyms). auto: softmax for heads of "
              "<= 100 classes, rank otherwise.", choices=("auto", "softmax", "rank")),
        Param("rank", 5, "rank rule: how many top classes of a centre count as the class.", 1, 100, 1),
        Param("context_rank", CONTEXT_RANK, "rank rule, this project's variant of mu_low: context prototypes must "
              "still rank the class within their top N classes (0 = every non-class centre is context).",
              0, 1000, 1),
        Param("use_bias", False, "Add the classifier bias when scoring centres (the paper's head has none)."),
        Param("source", "bank", "Where the class's pixel features come from. bank: the bank given (the Feature "
              "space page's, the CLI's --bank), else the backbone's dataset bank (testbed models: their train "
              "split, built on first use and cached), else this image's. image: this image's own pixels.",
              choices=("bank", "image")),
        Param("multiscale", True, "Average scales 1, 0.5, 1.5, 2 with mirror images, as the official code "
              "(7 extra forward passes); off: one scale, faster."),
    ),
    reference="Chen et al., CVPR 2023",
    idle=idle_lpcam_params,
))
