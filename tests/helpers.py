"""Constructed models and inputs with known answers, shared by the tests."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cam_core import Backbone, from_array

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"


class TwoChannelNet(nn.Module):
    """A hand-built classifier with known maps. Features are the red and green channels
    (1x1 conv, identity weights, ReLU). The head pools them with a fixed spatial weight
    (GAP when ``region`` is None, else the mean over the region only) and a linear layer
    with identity weights: class 0 = red evidence, class 1 = green evidence."""

    def __init__(self, size: int = 32, region: torch.Tensor | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 1] = 1.0
        self.act = nn.ReLU(inplace=True)
        pool = torch.ones(size, size) if region is None else region.float()
        self.register_buffer("pool_weight", pool / pool.sum())
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2) * 4.0)
            self.fc.bias.zero_()

    def forward_features(self, x):
        return self.act(self.conv(x))

    def forward_head(self, f):
        pooled = (f * self.pool_weight).sum(dim=(2, 3))
        return self.fc(pooled)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


class ColorNet(nn.Module):
    """Features = the ReLU'd RGB channels themselves (1x1 identity conv); GAP + a linear head
    with the given weight (classes x 3), no bias. A colour is a feature vector."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
        self.fc = nn.Linear(3, weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def forward_head(self, f):
        return self.fc(f.mean(dim=(2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


def color_backbone(weight, size=32, names=None) -> Backbone:
    model = ColorNet(torch.as_tensor(weight, dtype=torch.float32)).eval().requires_grad_(False)
    n = model.fc.weight.shape[0]
    return Backbone(
        name="colors", model=model, kind="cnn", input_size=(size, size), mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), interpolation="nearest", class_names=names or [f"c{i}" for i in range(n)],
        source="test",
    )


def toy_backbone(region=None, size=32) -> Backbone:
    model = TwoChannelNet(size, region).eval().requires_grad_(False)
    return Backbone(
        name="toy", model=model, kind="cnn", input_size=(size, size), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        interpolation="nearest", class_names=["red", "green"], source="test", cam_exact=region is None,
    )


def squares_image(size=32, a=(4, 12), b=(20, 28), color_a=(255, 0, 0), color_b=(255, 0, 0)):
    """Black image with square A at rows/cols a[0]:a[1] and square B at b[0]:b[1]."""
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[a[0]:a[1], a[0]:a[1]] = color_a
    rgb[b[0]:b[1], b[0]:b[1]] = color_b
    return from_array(rgb, "squares.png")


def pearson(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    assert a.std() > 0 and b.std() > 0, "a constant map cannot be compared"
    return float(np.corrcoef(a, b)[0, 1])


def png_header_only(width, height):
    """A valid PNG of the stated size whose pixel data is never needed: the loader must
    refuse it from the header, before decoding 400 megapixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def awkward_images() -> list[tuple[str, bytes, str | None]]:
    """(file name, bytes, expected error or None) for every kind of input a new user tries."""
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (200, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE)
    deep = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
    jpeg = encode(Image.fromarray(rgb), "JPEG", quality=90)
    return [
        ("notes.txt", b"just some text\n" * 20, "not an image"),
        ("empty.png", b"", "empty"),
        ("half.jpg", jpeg[: len(jpeg) // 2], "truncated"),
        ("huge.png", png_header_only(20000, 20000), "above the limit of 40 megapixels"),
        ("deep.png", encode(Image.fromarray(deep), "PNG"), None),
        ("cmyk.jpg", encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"), None),
        ("gray.png", encode(Image.fromarray(rgb).convert("L"), "PNG"), None),
        ("rgba.png", encode(Image.fromarray(rgb).convert("RGBA"), "PNG"), None),
        ("palette.gif", encode(pal, "GIF"), None),
        ("rotated.jpg", encode(Image.fromarray(rgb), "JPEG", exif=exif), None),
    ]


def constant_channel_backbone(size=32) -> Backbone:
    """ColorNet's red and green features plus a third feature channel that is 1 at every
    pixel (zero weights, bias 1), which the head ignores: class 0 = 4 x mean red, class 1 =
    4 x mean green. A constant channel localises nothing; Score-CAM must skip it."""
    model = ColorNet(torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
    model.conv = nn.Conv2d(3, 3, 1, bias=True)
    with torch.no_grad():
        model.conv.weight.copy_(torch.diag(torch.tensor([1.0, 1.0, 0.0]))[:, :, None, None])
        model.conv.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    model = model.eval().requires_grad_(False)
    return Backbone(
        name="constant-channel", model=model, kind="cnn", input_size=(size, size), mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), interpolation="nearest", class_names=["red", "green"], source="test",
    )


def page_titles(at):
    """The bold one-line titles a page shows (a tile's method label, ...)."""
    return [m.value.strip("*") for m in at.markdown if m.value.startswith("**") and m.value.endswith("**")]
