"""The method contract and registry.

A method is ``fn(ctx: MethodContext, target: int, **params) -> MethodOutput``: a function of
the cached forward pass (``ctx.fwd``) and the class, returning an unnormalised map on the
device. Each method declares what it needs and its parameters; pages and the CLI build their
controls and checks from these declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import Cancelled, MethodError

if TYPE_CHECKING:  # the engine imports this module; the type is only needed for annotations
    from ..engine import ForwardPass

# What a method may need beyond the cached forward pass.
NEEDS_GRADIENT = "gradient"  # d logit / d activations, one per target class, shared
NEEDS_HEAD = "head"  # the classifier applied to the head-input features (CAM)
NEEDS_LINEAR_HEAD = "linear_head"  # the classifier as one linear map of a single feature vector (LPCAM)
NEEDS_FORWARDS = "extra_forwards"  # more forward passes (Score-CAM): slow, shows progress
NEEDS_ATTENTION = "attention"
NEEDS_BANK = "bank"


@dataclass
class MethodContext:
    """What a method receives: the cached forward pass of one image at one layer, and the
    hooks of a long computation (progress, cancel, and a pause that lets interactive work of
    other sessions run first)."""

    fwd: ForwardPass
    progress: Callable[[int, int], None] | None = None
    cancel: Callable[[], bool] | None = None
    bank: object | None = None  # the LPCAM prototype bank passed in; None: see default_bank
    pause: Callable[[], None] | None = None  # yields to interactive work (engine-provided)
    # True while other callers' interactive work runs or ran moments ago: a long method then
    # keeps its batches small, so that the next interactive call waits less for the one in flight.
    contended: Callable[[], bool] | None = None
    # Without a bank: the backbone's dataset bank (built on first use), or None (engine-provided).
    default_bank: Callable[[], object | None] | None = None

    @property
    def backbone(self):
        return self.fwd.backbone

    @property
    def activations(self) -> torch.Tensor:
        return self.fwd.activations

    def gradient(self, target: int) -> torch.Tensor:
        return self.fwd.gradient(target)

    def checkpoint(self) -> None:
        """Between the batches of a long method: stop if cancelled, else let waiting
        interactive work go first."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")
        if self.pause is not None:
            self.pause()


@dataclass
class MethodOutput:
    """A method's result: the unnormalised map (h x w, on the device), method-specific
    extras (e.g. SIPE's seeds), and a note for the user (how it was computed)."""

    map: torch.Tensor
    extras: dict = field(default_factory=dict)
    note: str = ""
    label: str | None = None  # overrides the method's label, e.g. "LPCAM (this image's pixels)"
    approximate: bool = False  # this run departs from the paper (the spec may say so for every run)


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple = ()

    def validate(self, value: Any) -> Any:
        if self.choices:
            if value not in self.choices:
                raise MethodError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
            return value
        kind = type(self.default)
        if kind is bool:
            if isinstance(value, str):
                if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise MethodError(f"{self.name} must be true or false, got {value!r}")
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise MethodError(f"{self.name} must be a {kind.__name__}, got {value!r}") from None
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise MethodError(f"{self.name} must be in [{self.min}, {self.max}], got {value}")
        return value


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    fn: Callable[..., MethodOutput]  # fn(ctx: MethodContext, target, **params)
    description: str
    needs: frozenset[str] = frozenset()
    params: tuple[Param, ...] = ()
    class_specific: bool = True
    approximate: bool = False  # an approximation of a named method, labelled as such
    kinds: tuple[str, ...] = ("cnn", "vit")
    reference: str = ""
    # idle(values, backbone) -> {param name: why it has no effect with these values on this
    # backbone}; e.g. LPCAM's softmax thresholds under the rank rule. None: every param acts.
    idle: Callable[[dict, Any], dict[str, str]] | None = None

    def resolve_params(self, given: dict | None) -> dict:
        given = dict(given or {})
        unknown = set(given) - {p.name for p in self.params}
        if unknown:
            raise MethodError(f"{self.name} has no parameter {', '.join(sorted(unknown))}")
        return {p.name: p.validate(given.get(p.name, p.default)) for p in self.params}

    @property
    def slow(self) -> bool:
        return NEEDS_FORWARDS in self.needs

    @property
    def reads_layer(self) -> bool:
        """Whether the map depends on the chosen feature layer. Methods that need the head read
        the features the classifier pools (CAM, LPCAM, SIPE's stages, TS-CAM), and attention
        methods read every block's attention: the layer choice does not reach them."""
        return not self.needs & {NEEDS_HEAD, NEEDS_ATTENTION}

    def idle_params(self, values: dict | None, backbone) -> dict[str, str]:
        """{param name: why it has no effect} for these values (defaults where not given) on
        this backbone: a page disables those controls and says why."""
        if self.idle is None:
            return {}
        return self.idle({p.name: (values or {}).get(p.name, p.default) for p in self.params}, backbone)

    def refusal(self, backbone) -> str | None:
        """Why this method does not apply to `backbone`, as one sentence, or None if it does."""
        if backbone.kind not in self.kinds:
            return f"{self.name} does not apply to {backbone.kind.upper()} backbones"
        if NEEDS_HEAD in self.needs and backbone.head_refusal:
            return f"{self.label} does not apply to {backbone.name}: {backbone.head_refusal}"
        if NEEDS_HEAD in self.needs and not backbone.has_head_split:
            return f"{self.label} does not apply to {backbone.name}: it has no forward_features/forward_head split"
        if NEEDS_LINEAR_HEAD in self.needs and (reason := backbone.linear_head_refusal) is not None:
            return f"{self.label} does not apply to {backbone.name}: {reason}"
        if NEEDS_ATTENTION in self.needs and not backbone.attention_layers:
            return (f"{self.label} does not apply to {backbone.name}: it reads each block's softmax attention over "
                    "the class and patch tokens, which this model does not have")
        return None


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise MethodError(f"method {spec.name} registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method '{name}'; available: {', '.join(METHODS)}") from None
