"""Loading user images safely: every input becomes an RGB uint8 array or a clear ImageError."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Above this we refuse before decoding: a 40 MP RGB image is already 120 MB decoded, and
# Pillow's own bomb guard only fires at ~179 MP. Stated in the UI and the README.
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 200 * 1024 * 1024


class ImageError(ValueError):
    """An input that is not a usable image; the message is meant for the user."""


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray  # H x W x 3, uint8, EXIF orientation applied
    name: str
    sha256: str  # of the decoded pixels (and shape), so the same picture hashes the same
    notes: tuple[str, ...] = field(default=())

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    @property
    def stem(self) -> str:
        return Path(self.name).stem or "image"


def pixel_hash(rgb: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def _megapixels(pixels: int, limit: int) -> str:
    """``pixels`` in megapixels, truncated (never rounded up) to just enough decimals that a
    count above ``limit`` reads as above it: 40 005 000 -> "40.005", not "40" or "40.01"."""
    decimals = 0
    while decimals < 6 and (pixels // 10 ** (6 - decimals)) * 10 ** (6 - decimals) <= limit:
        decimals += 1
    return f"{pixels // 10 ** (6 - decimals) / 10**decimals:.{decimals}f}"


def _check_size(w: int, h: int, name: str, max_pixels: int, dims: str | None = None) -> None:
    """Refuse an image with no pixels, or with more than ``max_pixels`` (exactly the limit passes)."""
    dims = dims or f"{w}x{h}"
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: {dims} is {_megapixels(w * h, max_pixels)} megapixels, above the limit of "
            f"{max_pixels / 1e6:g} megapixels; downscale it first"
        )
    if w == 0 or h == 0:
        raise ImageError(f"{name}: the image has no pixels ({dims})")


def _array_dims(arr: np.ndarray) -> tuple[int, int, str]:
    h, w = int(arr.shape[0]), int(arr.shape[1])
    return w, h, f"{h} x {w} (H x W)"


def from_array(rgb: np.ndarray, name: str = "array", max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Wrap an H x W x 3 uint8 array (e.g. from a notebook); refuses empty or oversized arrays."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageError(f"expected an H x W x 3 uint8 array, got {arr.shape} {arr.dtype}")
    w, h, dims = _array_dims(arr)
    _check_size(w, h, name, max_pixels, dims)
    arr = np.ascontiguousarray(arr)
    return LoadedImage(rgb=arr, name=name, sha256=pixel_hash(arr))


def _to_8bit(img: Image.Image, notes: list[str]) -> Image.Image:
    """High-bit-depth grayscale (I;16, I, F) would be clipped by Pillow's convert('RGB')."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        notes.append(f"{img.mode} image scaled from 16 bit to 8 bit")
        arr8 = np.clip(arr.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)
    elif img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        notes.append("floating-point image min-max scaled to 8 bit")
        scale = (hi - lo) or 1.0
        arr8 = (np.nan_to_num((arr - lo) / scale) * 255).round().astype(np.uint8)
    else:
        arr8 = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L")


def _depth_and_cmyk(img: Image.Image, notes: list[str]) -> Image.Image:
    """The first conversions of every loader: high bit depths to 8 bit, CMYK to RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img, notes)
    if img.mode == "CMYK":
        notes.append("CMYK converted to RGB")
        img = img.convert("RGB")
    return img


def _flatten_alpha(img: Image.Image, notes: list[str]) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba)[:, :, 3]
    if alpha.min() < 255:
        notes.append("transparent pixels composited on white")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


_EXPECTED = "expected a path, bytes, PIL image or H x W x 3 uint8 array"


def _describe(source) -> str:
    if isinstance(source, np.ndarray):
        return f"a {source.dtype} array of shape {source.shape}"
    return "None" if source is None else f"a {type(source).__name__}"


def load_image(
    source: str | Path | bytes | Image.Image | np.ndarray, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> LoadedImage:
    """Turn a path, raw bytes (bytes, bytearray, memoryview), a PIL image, or a uint8 array
    (H x W x 3 RGB, H x W x 4 RGBA, H x W grayscale) into RGB uint8.

    Handles EXIF rotation, CMYK, grayscale, 16-bit, palette and alpha images alike whatever
    the container; refuses empty, truncated, non-image and oversized inputs, and any other
    type, with an ImageError. A PIL image passed in is never modified.
    """
    if isinstance(source, Image.Image):
        return _from_pil(source, name or Path(getattr(source, "filename", "") or "image").name, max_pixels)
    if isinstance(source, np.ndarray):
        return _from_uint8_array(source, name or "array", max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name
        try:
            if not path.exists():
                raise ImageError(f"{path}: no such file")
            if path.is_dir():
                raise ImageError(f"{name}: is a folder, not an image")
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(f"{name}: file is {size / 2**20:.0f} MB, above the {MAX_FILE_BYTES // 2**20} MB limit")
            data = path.read_bytes()
        except (OSError, ValueError) as exc:  # permission denied, name too long, a NUL byte in the name...
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"{name}: cannot read the file: {getattr(exc, 'strerror', None) or exc}") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "upload"
    else:
        raise ImageError(f"{_EXPECTED}, got {_describe(source)}")
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(*img.size, name, max_pixels)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's guard fires inside open(), before we see the size; its message carries it.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{_megapixels(int(found.group(1)), max_pixels)} megapixels, " if found else ""
        raise ImageError(
            f"{name}: image is too large ({size}above the limit of {max_pixels / 1e6:g} megapixels); downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file that can be read (PNG, JPEG, GIF, BMP, TIFF, WebP)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated").
        raise ImageError(f"{name}: the image data is broken or truncated: {exc}") from None
    return _from_pil(img, name, max_pixels)


def _from_uint8_array(arr: np.ndarray, name: str, max_pixels: int) -> LoadedImage:
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(f"{_EXPECTED}, got {_describe(arr)} (arrays: uint8, H x W x 3 RGB, H x W x 4 RGBA "
                         "or H x W grayscale)")
    w, h, dims = _array_dims(arr)
    _check_size(w, h, name, max_pixels, dims)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return from_array(arr, name, max_pixels)
    return _from_pil(Image.fromarray(np.ascontiguousarray(arr)), name, max_pixels)  # mode L or RGBA


def _from_pil(img: Image.Image, name: str, max_pixels: int) -> LoadedImage:
    """The conversions every input goes through, on a decoded (or lazily opened) PIL image."""
    _check_size(*img.size, name, max_pixels)
    notes: list[str] = []
    if getattr(img, "n_frames", 1) > 1:
        notes.append("first frame of an animated image")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: the image data is broken or truncated: {exc}") from None

    if _exif_orientation(img) not in (None, 1):
        img = ImageOps.exif_transpose(img)
        notes.append("rotated according to its EXIF orientation")

    img = _depth_and_cmyk(img, notes)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = _flatten_alpha(img, notes)
    elif img.mode != "RGB":
        if img.mode in ("L", "1"):
            notes.append("grayscale image repeated on three channels")
        img = img.convert("RGB")
    rgb = np.array(img, dtype=np.uint8)  # a copy: never a view of the caller's image
    return LoadedImage(rgb=rgb, name=name, sha256=pixel_hash(rgb), notes=tuple(notes))


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # malformed EXIF must not make the image unreadable
        return None


def resolve_under(path: str | Path, roots: list[Path]) -> Path:
    """Resolve a user-typed path and refuse anything outside the allowed folders.

    An absolute path must lie under one of ``roots``; a relative one is tried under each
    root in order and the first that exists wins. A bad path (a NUL byte, a name too long,
    a symlink loop...) is an ImageError, never an OSError."""
    text = str(path)
    if "\0" in text:
        raise ImageError(f"{text!r}: the path contains a NUL byte")
    try:
        p = Path(path).expanduser()
        resolved_roots = [root.resolve() for root in roots]
        candidates = [p] if p.is_absolute() else [root / p for root in roots]
        inside: list[tuple[Path, Path]] = []  # (resolved candidate, its root), in the order tried
        for cand in candidates:
            real = cand.resolve()
            for root, real_root in zip(roots, resolved_roots):
                if real.is_relative_to(real_root):
                    if real.exists():
                        return real
                    inside.append((real, root))
                    break
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop before 3.13
        raise ImageError(f"{text}: cannot be resolved: {getattr(exc, 'strerror', None) or exc}") from None
    if inside:
        folders = ", ".join(str(root) for _, root in inside)
        raise ImageError(f"{text}: no such file under {folders}")
    allowed = ", ".join(str(r) for r in roots)
    raise ImageError(f"{text}: outside the allowed folders ({allowed})")


# ----- a bounded working copy of large images ----------------------------------------------
# The longest side, in pixels, of the image the app keeps and works on. The maps are computed
# at the model's input size (224 to 518 px for the backbones offered) and shown at most 640 px
# wide, so a larger original only costs memory: a 40 MP photo is 120 MB decoded, its
# 2048 x 1280 working copy 7.9 MB (12.6 MB at most, 2048 x 2048). Meant as the one cap: an
# input size "of the image's own size" (to come) cannot exceed the working copy either.
WORKING_MAX_SIDE = 2048

_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def working_size(width: int, height: int, max_side: int = WORKING_MAX_SIDE) -> tuple[int, int]:
    """(width, height) scaled by min(1, max_side / longest side), rounded, aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def bound_image(image: LoadedImage, max_side: int = WORKING_MAX_SIDE) -> LoadedImage:
    """The image itself if its longest side is at most max_side, else a copy downscaled to it
    (area resampling: each new pixel is the mean of the pixels it covers) with the note
    "downscaled from W0xH0 to WxH" and the hash of its own pixels."""
    h0, w0 = image.size
    size = working_size(w0, h0, max_side)
    if size == (w0, h0):
        return image
    rgb = np.ascontiguousarray(np.asarray(Image.fromarray(image.rgb).resize(size, Image.Resampling.BOX)))
    note = f"downscaled from {w0}x{h0} to {size[0]}x{size[1]}"
    return LoadedImage(rgb=rgb, name=image.name, sha256=pixel_hash(rgb), notes=(*image.notes, note))


def _header(source: str | Path | bytes, max_pixels: int) -> tuple[bytes, int, int] | None:
    """(bytes, width, height) of an image that may be decoded, from its header only; None
    for anything load_image must judge (missing, empty, too large, not an image)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                return None
            data = path.read_bytes()
        except (OSError, ValueError):
            return None
    else:
        data = bytes(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            w, h = Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - load_image tells the user why
        return None
    if w * h > max_pixels or w == 0 or h == 0:
        return None
    return data, w, h


def load_working_image(
    source: str | Path | bytes, name: str | None = None, max_side: int = WORKING_MAX_SIDE, max_pixels: int = MAX_PIXELS
) -> LoadedImage:
    """load_image, bounded: an image whose longest side exceeds max_side comes back as
    bound_image would give it (downscaled, with the note), but decoded without the full-size
    copies load_image makes: the decoded original is the only full-size buffer (a JPEG is
    decoded at 1/2, 1/4 or 1/8 scale when that is still at least the working size) and it is
    freed before this returns. Images within max_side, and every refused input (same
    ImageError), are load_image's."""
    found = _header(source, max_pixels)
    if found is None or max(found[1], found[2]) <= max_side:
        return load_image(source, name, max_pixels)
    data = found[0]
    if name is None:
        name = Path(source).name if isinstance(source, (str, Path)) else "upload"
    try:
        return _load_downscaled(data, name, max_side)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        # broken data: load_image raises the ImageError the user should see
        return bound_image(load_image(data, name, max_pixels), max_side)


def _load_downscaled(data: bytes, name: str, max_side: int) -> LoadedImage:
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        w0, h0 = img.size
        size = working_size(w0, h0, max_side)
        if getattr(img, "n_frames", 1) > 1:
            notes.append("first frame of an animated image")
        if img.format == "JPEG":
            img.draft(img.mode, size)
        img.load()
    orientation = _exif_orientation(img)
    if orientation in _ORIENTATIONS:
        notes.append("rotated according to its EXIF orientation")
    # load_image's conversions, each where it is cheapest: bit depth and CMYK before the
    # resize (as load_image); alpha composited on white after it (the resize weights colours
    # by alpha); grey made three channels after it.
    img = _depth_and_cmyk(img, notes)
    alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if alpha:
        img = img.convert("RGBA")
    elif img.mode in ("L", "1"):
        notes.append("grayscale image repeated on three channels")
        img = img.convert("L")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize(size, Image.Resampling.BOX)  # the full-size image is freed here
    if orientation in _ORIENTATIONS:
        img = img.transpose(_ORIENTATIONS[orientation])
    img = _flatten_alpha(img, notes) if alpha else img.convert("RGB")
    ow, oh = (h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0)  # as the user sees it
    notes.append(f"downscaled from {ow}x{oh} to {img.size[0]}x{img.size[1]}")
    rgb = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    return LoadedImage(rgb=rgb, name=name, sha256=pixel_hash(rgb), notes=tuple(notes))
