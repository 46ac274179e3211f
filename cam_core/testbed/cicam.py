"""CI-CAM (Shao et al., ACM MM 2021) and KD-CI-CAM (Shao et al., 2023) on the testbed CNN.

Written from the official code (shaofeifei11/CI-CAM; KD-CI-CAM-teacher-github/model/
cub_vgg16_0702.py, train_0702.py, utils.py; KD-CI-CAM-student-github/
train_student_randomresizecrop.py), with the testbed's timm ResNet in place of VGG16:

* non-local blocks (the official ``Self_Attn``) after each of the four stages, residual, their
  BatchNorm initialised to 0 so that each starts as the identity;
* the up branch: GAP -> linear -> logits, CAM_up = W_up . F (no bias, as ``_compute_cam``);
* the down branch: a dictionary M of class CAMs (K x h x w, a buffer, never trained by
  gradient); the entry of the up branch's top-1 class, placed in its channel of an otherwise
  zero K-channel map, goes through a 1x1 conv (K -> C, with bias) to an attention A, and
  F' = F + A * F feeds the down classifier (the up one when shared, the official default);
  CAM_down = W_down . F' is CI-CAM's map and the down logits its prediction;
* the dictionary update (``old_create_attention`` + ``update_mask``): each image whose top-1
  up class is one of its labels adds its CAM_up of that class to that class's slot; the
  slots are standardised per class (the official BatchNorm2d in training mode, weight 1 and
  bias 0 never trained), added to M times the update rate, and M is standardised again;
* the auxiliary loss (``aux_classification``): the combinational CAM of the down branch
  (``torch_cam_combination``, quadratic) upsampled and cut at seg_thr x its maximum masks
  the input into foreground and background; both go through the backbone and the down
  classifier; diff = fore - back, aux = (diff + down) / 2.

The testbed is multi-label, so every cross-entropy of the official code is a binary
cross-entropy on the multi-hot labels here, and "the prediction is right" means "the top-1
class is one of the image's labels".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import CNN_CONFIG, INPUT_SIZE, build_model

CICAM_CONFIG = {**CNN_CONFIG, "non_local": [1, 2, 3, 4], "shared_classifier": True, "attention": True,
                "input_size": INPUT_SIZE}


class NonLocal(nn.Module):
    """The official ``Self_Attn``: q, k (C -> C/8) and v (C -> C) 1x1 convs, softmax over
    positions of q.k (no scaling), the attended values through a 1x1 conv and a BatchNorm
    initialised to zero, added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B x hw x c'
        k = self.key(x).flatten(2)  # B x c' x hw
        attention = torch.softmax(q @ k, dim=-1)  # row i: where position i looks
        out = (self.value(x).flatten(2) @ attention.transpose(1, 2)).view(b, c, h, w)
        return x + self.bn(self.mix(out))


@dataclass
class Branches:
    features: torch.Tensor  # F, B x C x h x w
    up_logits: torch.Tensor
    up_cam: torch.Tensor  # B x K x h x w
    top1: torch.Tensor  # B, the up branch's top-1 class
    attention: torch.Tensor  # A, B x C x h x w (zeros when the attention is off)
    down_features: torch.Tensor  # F + A * F
    down_logits: torch.Tensor
    down_cam: torch.Tensor


def class_cams(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """B x C x h x w features, K x C weights -> B x K x h x w (the official CAM: no bias)."""
    return torch.einsum("kc,bchw->bkhw", weight, features)


def standardise(m: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each K slot to zero mean and unit variance over its pixels: what the official
    BatchNorm2d(K) does to a 1 x K x h x w input in training mode (biased variance, weight 1,
    bias 0). An all-zero slot stays zero."""
    mean = m.mean(dim=(1, 2), keepdim=True)
    var = m.var(dim=(1, 2), unbiased=False, keepdim=True)
    return (m - mean) / torch.sqrt(var + eps)


def class_entries(labels: torch.Tensor, up_logits: torch.Tensor, up_cam: torch.Tensor) -> torch.Tensor:
    """K x h x w: the sum, over the images whose top-1 up class is one of their labels, of
    their CAM_up of that class, in that class's slot (``old_create_attention``)."""
    top1 = up_logits.argmax(dim=1)
    rows = torch.arange(len(top1), device=top1.device)
    right = labels[rows, top1] > 0.5
    out = torch.zeros(up_cam.shape[1:], dtype=up_cam.dtype, device=up_cam.device)
    return out.index_add_(0, top1[right], up_cam[rows, top1][right])


def combination_map(cam: torch.Tensor, logits: torch.Tensor, function: str = "quadratic") -> torch.Tensor:
    """CI-CAM's combinational CAM (``torch_cam_combination``): the K class maps sorted by
    score, summed with a weight per rank r = 0..K-1, minus each image's minimum.
    quadratic: -(r / (K-1))^2 (0 for the top class, the official default); linear: 1 - 2r/(K-1);
    top1: the top class's map alone. B x K x h x w -> B x h x w."""
    b, k, h, w = cam.shape
    order = logits.argsort(dim=1, descending=True)
    ranked = cam.gather(1, order[:, :, None, None].expand(b, k, h, w))
    if function == "quadratic":
        weights = -torch.linspace(0, 1, k, device=cam.device, dtype=cam.dtype) ** 2
    elif function == "linear":
        weights = torch.linspace(1, -1, k, device=cam.device, dtype=cam.dtype)
    elif function == "top1":
        weights = torch.zeros(k, device=cam.device, dtype=cam.dtype)
        weights[0] = 1.0
    else:
        raise ValueError(f"combination function must be quadratic, linear or top1, got {function!r}")
    m = torch.einsum("k,bkhw->bhw", weights, ranked)
    return m - m.flatten(1).min(dim=1)[0][:, None, None]


class CICAM(nn.Module):
    """The testbed CNN with non-local blocks, an up and a down branch and the class-CAM
    dictionary. ``forward`` returns the down branch's logits (the official ``cls_selection``
    default); ``branches`` returns everything. For cam_core's Backbone it has timm's split:
    ``forward_features`` gives the down branch's features F + A F and ``forward_head`` /
    ``get_classifier`` its classifier, so CAM on it is CAM_down. Nothing in a forward pass
    changes the model: only ``update_dictionary`` (training) writes the dictionary."""

    def __init__(self, num_classes: int, config: dict | None = None):
        super().__init__()
        cfg = {**CICAM_CONFIG, **(config or {})}
        self.config = cfg
        self.num_classes = num_classes
        net = build_model("cnn", num_classes, {k: cfg[k] for k in CNN_CONFIG})
        channels = list(cfg["channels"])
        for stage in cfg["non_local"]:
            name = f"layer{stage}"
            setattr(net, name, nn.Sequential(getattr(net, name), NonLocal(channels[stage - 1])))
        net.fc = nn.Identity()  # the classifiers live here, so that the shared one is one module
        self.backbone = net
        c = channels[-1]
        self.up_classifier = nn.Linear(c, num_classes)
        self.shared_classifier = bool(cfg["shared_classifier"])
        if not self.shared_classifier:
            self.separate_down_classifier = nn.Linear(c, num_classes)
        self.mask2attention = nn.Conv2d(num_classes, c, 1)
        side = int(cfg["input_size"]) // int(cfg["output_stride"])
        self.register_buffer("dictionary", torch.zeros(num_classes, side, side))

    @property
    def down_classifier(self) -> nn.Linear:
        return self.up_classifier if self.shared_classifier else self.separate_down_classifier

    def base_features(self, x: torch.Tensor) -> torch.Tensor:
        """F: the non-local ResNet's output, shared by both branches."""
        return self.backbone.forward_features(x)

    def attention(self, top1: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A = conv1x1(context), the context being zeros but for the top-1 class's channel,
        which holds its dictionary entry (resized when the features are another size)."""
        entries = self.dictionary[top1]
        if tuple(entries.shape[-2:]) != tuple(size):
            entries = F.interpolate(entries[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        context = torch.zeros(len(top1), self.num_classes, *size, dtype=entries.dtype, device=entries.device)
        context[torch.arange(len(top1), device=top1.device), top1] = entries
        return self.mask2attention(context)

    def _down(self, x: torch.Tensor):
        f = self.base_features(x)
        up_logits = self.up_classifier(f.mean(dim=(2, 3)))
        top1 = up_logits.argmax(dim=1)
        if self.config["attention"]:
            a = self.attention(top1, tuple(f.shape[-2:]))
        else:
            a = torch.zeros_like(f)
        return f, up_logits, top1, a, f + a * f

    def branches(self, x: torch.Tensor) -> Branches:
        f, up_logits, top1, a, down = self._down(x)
        return Branches(f, up_logits, class_cams(f, self.up_classifier.weight), top1, a, down,
                        self.forward_head(down), class_cams(down, self.down_classifier.weight))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._down(x)[-1]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        return pooled if pre_logits else self.down_classifier(pooled)

    def get_classifier(self) -> nn.Module:
        return self.down_classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def update_dictionary(self, labels: torch.Tensor, up_logits: torch.Tensor, up_cam: torch.Tensor,
                          rate: float) -> None:
        """M <- standardise(M + rate * standardise(class_entries)) (``update_mask``)."""
        entries = standardise(class_entries(labels, up_logits.detach(), up_cam.detach()))
        self.dictionary.copy_(standardise(self.dictionary + rate * entries))

    def aux_logits(self, x: torch.Tensor, out: Branches, seg_thr: float, function: str = "quadratic"):
        """(fore, back, diff, aux) logits of ``aux_classification``: the input masked by the down
        branch's combinational CAM above seg_thr x its maximum, and by the rest."""
        with torch.no_grad():
            m = combination_map(out.down_cam, out.down_logits, function)
            m = F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
            fg = (m > seg_thr * m.flatten(1).max(dim=1)[0][:, None, None, None]).to(x.dtype)
        fore = self.down_classifier(self.base_features(x * fg).mean(dim=(2, 3)))
        back = self.down_classifier(self.base_features(x * (1 - fg)).mean(dim=(2, 3)))
        diff = fore - back
        return fore, back, diff, (diff + out.down_logits) / 2


# ----- losses ----------------------------------------------------------------------------------
def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The mean entropy (bits) of the per-class sigmoid: the multi-label stand-in for the
    official ``compute_entropy`` of the background's scores (which it maximises)."""
    p = logits.sigmoid().clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p)).mean()


def teacher_loss(model: CICAM, x: torch.Tensor, y: torch.Tensor, out: Branches, aux_type: str = "diff_aux",
                 aux_rate: float = 0.5, seg_thr: float = 0.0, spa_rate: float = 0.0,
                 function: str = "quadratic") -> torch.Tensor:
    """train_0702's loss: BCE(up) + BCE(down) + aux_rate x (each of diff, aux, fore named in
    aux_type; minus the background's entropy for back) + spa_rate x the mean of the upsampled
    combinational CAM of the down branch (its ``spa_loss`` 2)."""
    loss = F.binary_cross_entropy_with_logits(out.up_logits, y) + F.binary_cross_entropy_with_logits(out.down_logits, y)
    if aux_rate and aux_type:
        fore, back, diff, aux = model.aux_logits(x, out, seg_thr, function)
        for name, logits in (("diff", diff), ("aux", aux), ("fore", fore)):
            if name in aux_type:
                loss = loss + aux_rate * F.binary_cross_entropy_with_logits(logits, y)
        if "back" in aux_type:
            loss = loss - aux_rate * binary_entropy(back)
    if spa_rate:
        m = combination_map(out.down_cam, out.down_logits, function)
        m = F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + spa_rate * m.mean()
    return loss


def kd_cls_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                official: bool = False) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes at temperature T, summed over classes and
    averaged over images (KLDivLoss 'batchmean'). official=True reproduces the official
    call, which hands KLDivLoss the student's probabilities where it expects their logarithm:
    sum p_t (log p_t - p_s)."""
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    z = student_logits / temperature
    s = F.softmax(z, dim=1) if official else F.log_softmax(z, dim=1)
    return F.kl_div(s, p_t, reduction="batchmean")


def kd_loc_loss(student_cam: torch.Tensor, teacher_cam: torch.Tensor, temperature: float,
                kind: str = "mse") -> torch.Tensor:
    """Distance between sigmoid(CAM / T) of student and teacher, all classes' maps flattened
    (kd_fe_loss 1: mse, 5: smoothl1, 7: l1); mean over elements."""
    s = torch.sigmoid(student_cam.flatten(1) / temperature)
    t = torch.sigmoid(teacher_cam.flatten(1) / temperature)
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "smoothl1":
        return F.smooth_l1_loss(s, t)
    if kind == "l1":
        return F.l1_loss(s, t)
    raise ValueError(f"loc distillation loss must be mse, smoothl1 or l1, got {kind!r}")


def student_loss(out: Branches, y: torch.Tensor, flags: torch.Tensor, cls_teacher_logits: torch.Tensor | None,
                 loc_teacher_cam: torch.Tensor | None, alpha: float = 0.8, cls_temperature: float = 15.0,
                 loc_temperature: float = 15.0, loc_weight: float = 1.0, loc_kind: str = "mse",
                 official_kl: bool = False) -> torch.Tensor:
    """train_student_randomresizecrop's loss: (1 - alpha) BCE(down, y) on every image,
    + alpha KD_cls on the images flagged 1 (classification crops, the classification teacher)
    + alpha loc_weight KD_loc on those flagged 2 (localisation crops, the localisation teacher);
    flag 0: the label only."""
    loss = (1 - alpha) * F.binary_cross_entropy_with_logits(out.down_logits, y)
    cls_rows, loc_rows = flags == 1, flags == 2
    if cls_rows.any():
        loss = loss + alpha * kd_cls_loss(out.down_logits[cls_rows], cls_teacher_logits[cls_rows], cls_temperature,
                                          official_kl)
    if loc_rows.any():
        loss = loss + alpha * loc_weight * kd_loc_loss(out.down_cam[loc_rows], loc_teacher_cam[loc_rows],
                                                       loc_temperature, loc_kind)
    return loss
