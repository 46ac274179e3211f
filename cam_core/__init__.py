"""CAM Explorer's library: class activation maps by many methods on one cached forward pass.

    from cam_core import load_backbone, load_image, Explainer
    explainer = Explainer(load_backbone("efficientnet_lite0"))
    maps = explainer.explain(load_image("cat.png"), ["cam", "gradcam", "scorecam"])

Never imports Streamlit: usable from notebooks, the CLI and the app alike.
"""

from .backbones import BACKBONES, FEATURES, Backbone, BackboneError, load_backbone, register_backbone
from .engine import CamResult, Explainer, ForwardPass, LayerError
from .images import MAX_PIXELS, ImageError, LoadedImage, from_array, load_image
from .kmeans import KMeansError, kmeans
from .methods import METHODS, Cancelled, MethodError, MethodSpec, Param, get_method, register
from .prototypes import BankError, PrototypeBank, build_bank, folder_items
from .render import normalize, to_image_map, upsample
from .targets import Prediction, TargetError, search_classes

__all__ = [
    "BACKBONES", "FEATURES", "Backbone", "BackboneError", "load_backbone", "register_backbone",
    "CamResult", "Explainer", "ForwardPass", "LayerError",
    "MAX_PIXELS", "ImageError", "LoadedImage", "from_array", "load_image",
    "KMeansError", "kmeans",
    "METHODS", "Cancelled", "MethodError", "MethodSpec", "Param", "get_method", "register",
    "BankError", "PrototypeBank", "build_bank", "folder_items",
    "normalize", "to_image_map", "upsample",
    "Prediction", "TargetError", "search_classes",
]
