"""The one normalisation / upsampling / overlay step between raw maps and pixels.

Maps arrive unnormalised on the device; they leave as [0,1] arrays of the image's size or
as RGB overlays. Threshold, opacity and colormap act here only, so changing them never
recomputes a map.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

NORMALISATIONS = ("minmax", "max")
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "gray")


def normalize(m: torch.Tensor, mode: str = "minmax") -> torch.Tensor:
    """'minmax': (m - min) / (max - min), as pytorch-grad-cam, torchcam and TS-CAM;
    'max': m / max (negatives clipped), as LPCAM and SIPE. A constant map gives zeros
    (no NaN from 0/0, and no uniform 'everything is salient' map)."""
    m = torch.nan_to_num(m.float())
    if mode not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation '{mode}'; choose one of {NORMALISATIONS}")
    if mode == "max":
        m = m.clamp_min(0)
    lo, hi = m.min(), m.max()
    if not hi > lo:  # a constant map localises nothing
        return torch.zeros_like(m)
    return (m - lo) / (hi - lo) if mode == "minmax" else m / hi


def upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (half-pixel centres, like cv2.resize) to size = (height, width)."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m.float()
    return F.interpolate(m.float()[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def to_image_map(m: torch.Tensor, size: tuple[int, int], mode: str = "minmax") -> np.ndarray:
    """Upsample to the image's (H, W), then normalise: float32 in [0,1] on the CPU."""
    return normalize(upsample(m, size), mode).cpu().numpy().astype(np.float32)


def _lut(name: str) -> np.ndarray:
    if name == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp] * 3, axis=1)
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


_LUTS: dict[str, np.ndarray] = {}


def colorize(m01: np.ndarray, cmap: str = "jet") -> np.ndarray:
    if cmap not in _LUTS:
        if cmap not in COLORMAPS:
            raise ValueError(f"unknown colormap '{cmap}'; choose one of {COLORMAPS}")
        _LUTS[cmap] = np.ascontiguousarray(_lut(cmap).reshape(256, 1, 3))
    m = np.asarray(m01, dtype=np.float32)
    if not np.isfinite(m).all():
        m = np.nan_to_num(m, nan=0.0, posinf=1.0, neginf=0.0)
    # round(255 m) saturated to 0..255, then a per-channel table: OpenCV's SIMD paths, ~6x numpy
    idx = cv2.convertScaleAbs(np.maximum(m, 0.0), alpha=255.0)
    return cv2.LUT(cv2.merge([idx, idx, idx]), _LUTS[cmap])


def overlay(rgb: np.ndarray, m01: np.ndarray, opacity: float = 0.5, cmap: str = "jet") -> np.ndarray:
    heat = colorize(m01, cmap)
    return cv2.addWeighted(np.ascontiguousarray(rgb), 1.0 - opacity, heat, opacity, 0.0)


@dataclass(frozen=True)
class Region:
    mask: np.ndarray  # bool, H x W: map >= threshold
    box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 (inclusive) of the largest connected region
    contours: tuple  # cv2 contours of all regions
    area_fraction: float


def threshold_region(m01: np.ndarray, threshold: float) -> Region:
    """Pixels at or above the threshold; the box around the largest contour (as TS-CAM and
    the CAM localisation protocol do)."""
    mask = m01 >= threshold
    u8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    box = None
    if contours:
        largest = max(contours, key=cv2.contourArea)
        x, y, w, h = cv2.boundingRect(largest)
        box = (int(x), int(y), int(x + w - 1), int(y + h - 1))
    return Region(mask, box, tuple(contours), float(mask.mean()))


def draw_region(img: np.ndarray, region: Region, color=(255, 255, 255), box_color=(0, 255, 0)) -> np.ndarray:
    out = np.ascontiguousarray(img.copy())
    thickness = max(1, round(max(out.shape[:2]) / 300))
    if region.contours:
        cv2.drawContours(out, list(region.contours), -1, color, thickness)
    if region.box is not None:
        x1, y1, x2, y2 = region.box
        cv2.rectangle(out, (x1, y1), (x2, y2), box_color, thickness)
    return out


def render_tile(
    rgb: np.ndarray, m01: np.ndarray, opacity: float = 0.5, cmap: str = "jet", threshold: float | None = None
) -> np.ndarray:
    tile = overlay(rgb, m01, opacity, cmap)
    if threshold is not None and threshold > 0:
        tile = draw_region(tile, threshold_region(m01, threshold))
    return tile


def downscale_for_display(rgb: np.ndarray, max_side: int = 640) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return rgb, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)), scale


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32))
    return buf.getvalue()


# What the ends of a colour bar stand for under each normalisation.
COLORBAR_ENDS = {"minmax": ("0 = the map's min", "1 = its max"), "max": ("0 (or below)", "1 = the map's max")}


def colorbar(cmap: str, width: int, norm: str = "minmax", height: int = 10) -> np.ndarray:
    """A horizontal colour bar `width` px wide: the colormap from 0 (left) to 1 (right), over
    a line saying what its ends mean under the normalisation `norm` (COLORBAR_ENDS)."""
    width = max(2, int(width))
    ramp = np.repeat(np.linspace(0.0, 1.0, width, dtype=np.float32)[None], height, axis=0)
    bar = colorize(ramp, cmap)
    lo, hi = COLORBAR_ENDS[norm] if width >= 200 else ("0", "1")
    text = Image.new("RGB", (width, 12), (255, 255, 255))
    draw = ImageDraw.Draw(text)
    font = ImageFont.load_default()
    draw.text((1, 0), lo, fill=(0, 0, 0), font=font)
    draw.text((max(1, width - 1 - round(draw.textlength(hi, font=font))), 0), hi, fill=(0, 0, 0), font=font)
    return np.concatenate([bar, np.asarray(text)], axis=0)


def with_colorbar(tile: np.ndarray, cmap: str, norm: str = "minmax") -> np.ndarray:
    """The tile over its colour bar, as it is shown and downloaded."""
    gap = np.full((2, tile.shape[1], 3), 255, np.uint8)
    return np.concatenate([tile, gap, colorbar(cmap, tile.shape[1], norm)], axis=0)


def compose_grid(tiles: list[tuple[str, np.ndarray]], columns: int = 4, tile_side: int = 320,
                 title: str | None = None, cmap: str | None = None, norm: str = "minmax") -> np.ndarray:
    """Tiles with their captions on one sheet (the 'download the whole grid' image), in the
    order given; `title` (the settings) above them and, with `cmap`, one colour bar under
    them for the whole sheet."""
    if not tiles:
        raise ValueError("no tiles to compose")
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    h0, w0 = tiles[0][1].shape[:2]
    scale = tile_side / max(h0, w0)
    tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    caption_h, pad = 22, 6
    top = caption_h if title else 0
    bar = colorbar(cmap, min(400, columns * (tw + pad) - pad), norm) if cmap else None
    bottom = bar.shape[0] + pad if bar is not None else 0
    sheet = Image.new("RGB", (columns * (tw + pad) + pad, top + rows * (th + caption_h + pad) + pad + bottom),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    for i, (caption, img) in enumerate(tiles):
        r, c = divmod(i, columns)
        x, y = pad + c * (tw + pad), top + pad + r * (th + caption_h + pad)
        draw.text((x, y + 4), caption, fill=(0, 0, 0), font=font)
        sheet.paste(Image.fromarray(img).resize((tw, th), Image.BILINEAR), (x, y + caption_h))
    if bar is not None:
        sheet.paste(Image.fromarray(bar), (pad, sheet.height - bottom))
    return np.asarray(sheet)


LABEL_COLOURS = np.array(
    [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)], dtype=np.float32
)


def label_overlay(rgb: np.ndarray, labels: np.ndarray, opacity: float = 0.55) -> np.ndarray:
    """Tint each labelled region (label 0 = background, left as is) with its colour."""
    lab = labels.astype(int)
    colours = LABEL_COLOURS[np.clip(lab, 0, len(LABEL_COLOURS) - 1)]
    alpha = np.where(lab > 0, opacity, 0.0)[..., None]
    return np.clip(rgb * (1 - alpha) + colours * alpha + 0.5, 0, 255).astype(np.uint8)


def highlight(rgb: np.ndarray, mask: np.ndarray, dim: float = 0.3) -> np.ndarray:
    """Selected pixels as they are, the rest darkened, the selection outlined."""
    out = np.where(mask[..., None], rgb, (rgb * dim).astype(np.uint8))
    return draw_region(out, threshold_region(mask.astype(np.float32), 0.5), color=(255, 255, 0), box_color=(255, 255, 0))


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label or mask grid to (H, W) without mixing labels."""
    t = torch.from_numpy(np.ascontiguousarray(labels)).float()[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy().astype(labels.dtype)


def group_colours(n_first: int, n_second: int) -> tuple[list[str], list[str]]:
    """Distinct hex colours for two groups of clusters that never share a colour: the first
    group's hues from red to yellow-green (0-150 degrees), the second's from cyan to magenta
    (180-320 degrees), evenly spaced; alternate clusters darker, so neighbours differ more."""

    def spread(n: int, start: float, stop: float) -> list[str]:
        out = []
        for i in range(n):
            hue = start + (stop - start) * i / max(n, 1)
            r, g, b = colorsys.hsv_to_rgb(hue / 360, 0.85, 0.95 if i % 2 == 0 else 0.65)
            out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
        return out

    return spread(n_first, 0.0, 150.0), spread(n_second, 180.0, 320.0)


def hex_colour(rgb) -> str:
    """'#rrggbb' of an (r, g, b) in 0-255."""
    return "#" + "".join(f"{int(round(float(v))):02x}" for v in rgb)
