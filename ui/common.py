"""What every page shares: cached backbones/explainers, image decoding, the sidebar.

Outside pages/ so that Streamlit never offers it as a page. app.py draws the sidebar on every
run and hands its Selection to the page it runs (run_page / page_selection).
Streamlit-side only; every computation is a cam_core call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import runpy
import threading
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from cam_core import (
    BACKBONES,
    BackboneError,
    BankError,
    Explainer,
    ImageError,
    KMeansError,
    LayerError,
    LoadedImage,
    MethodError,
    Param,
    TargetError,
    load_backbone,
)
from cam_core.backbones import available_devices, device_label
from cam_core.engine import INPUT_SIZES, MAX_INPUT_SIDE, InputSizeError, resolve_input_size
from cam_core.images import MAX_PIXELS, WORKING_MAX_SIDE, load_working_image, resolve_under
from cam_core.lru import ByteLRU
from cam_core.samples import SampleTruth, sample_truths
from cam_core.render import (
    compose_grid,
    downscale_for_display,
    npy_bytes,
    png_bytes,
    render_tile,
    to_image_map,
    with_colorbar,
)
from ui import preload
from ui.preload import DEFAULT_BACKBONE

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"
DEFAULT_SAMPLE = "cat.png"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
HUB = "timm hub model (online)…"
# What a computation may raise because of what the user chose: shown as a message in place.
USER_ERRORS = (MethodError, LayerError, TargetError, BankError, KMeansError, BackboneError)
CHECKPOINT = "local checkpoint…"
EXTRA_BACKBONES = ["random:resnet18", "random:deit_tiny_patch16_224"]


def bank_dir() -> Path:
    """Where the app saves and finds LPCAM banks: CAM_EXPLORER_BANK_DIR, else ./banks."""
    return Path(os.environ.get("CAM_EXPLORER_BANK_DIR", ROOT / "banks"))


def testbed_dir() -> Path:
    """Where the Evaluate page generates the testbed on first use: CAM_EXPLORER_TESTBED_DIR, else ./data/testbed."""
    return Path(os.environ.get("CAM_EXPLORER_TESTBED_DIR", ROOT / "data" / "testbed"))


def allowed_image_dirs() -> list[Path]:
    """Folders a typed path may point into: the samples, the testbed, plus CAM_EXPLORER_IMAGE_DIRS (':'-separated)."""
    extra = [Path(p) for p in os.environ.get("CAM_EXPLORER_IMAGE_DIRS", "").split(os.pathsep) if p]
    return [SAMPLES, testbed_dir(), *extra]


@st.cache_resource(show_spinner="Loading the backbone…", max_entries=6)
def get_explainer(
    name: str, device: str, checkpoint: str | None = None, num_classes: int | None = None, class_names: str | None = None
) -> Explainer:
    # cache_resource: one model per (backbone, device) shared by every browser session;
    # the Explainer serialises computations with its own lock.
    # Not warmed up here: the first page's tiles come first (warm_up_once, after they are shown).
    # Started at server start by ui/serve.py (the README's scripts/app.sh): taken from there.
    if (checkpoint, num_classes, class_names) == (None, None, None) and (pre := preload.take(name, device)):
        try:
            return pre.result()
        except Exception:  # noqa: BLE001 - built again below, which raises the error for the page
            pass
    backbone = load_backbone(name, device, checkpoint=checkpoint, num_classes=num_classes, class_names=class_names)
    return Explainer(backbone)


_WARMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Explainer -> the methods warmed up
_WARM_LOCK = threading.Lock()


def warm_up_once(explainer: Explainer, methods: list[str]) -> None:
    """Called by a page after its tiles are on the screen: warm up (Explainer.warm_up) the
    methods it shows that this explainer has not warmed up yet, so that the times on later
    tiles are steady-state times. Warming every method before the first page (as before)
    made the first tiles wait for all of them (8.9 s to the first tiles, issue 9 item 17)."""
    with _WARM_LOCK:
        done = _WARMED.setdefault(explainer, set())
        todo = [m for m in methods if m not in done]
        if todo:
            explainer.warm_up(todo)
            done.update(todo)


# Decoded images, shared by every session, bounded by their bytes: each is at most
# WORKING_MAX_SIDE x WORKING_MAX_SIDE x 3 (12.6 MB; larger images are downscaled on load), so
# this keeps 6 working copies of 2048 x 1280 uploads, or ~100 samples; a session keeps its own
# image besides (st.session_state["last_image"], the same object). Not st.cache_data: that
# bounds the count only, and pickles, so every session's rerun got its own copy of the pixels.
DECODED_IMAGES_BYTES = 48 * 2**20
# One decode at a time: a full-size original (up to 160 MB for 40 MP) is then paid once, not
# once per session uploading at the same moment. Only cache misses wait for it.
_DECODE_LOCK = threading.Lock()


def _return_large_blocks_to_the_system(threshold: int = 4 * 2**20) -> bool:
    """glibc: serve every allocation of `threshold` bytes or more by its own mmap, so that it
    goes back to the system when freed. By default glibc raises that threshold up to 32 MB
    once large blocks have been freed, and from then on the 8-10 MB buffers of each upload
    (the working copy, its hash, Pillow's image of it) come from the heaps of the short-lived
    session threads, where what is freed mostly stays in RSS, scattered.
    scripts/upload_memory.py (20 uploads of 40 MP): without this, peak 1.58, 1.48, 1.48 GB
    and 1.30-1.33 GB after; with it, peak 1.43-1.45 GB over five runs and 1.24-1.28 GB after.
    The forward pass and the fast methods take the same time (on and off alternated in one
    process on the loaded 2-core machine: median 248 vs 273 ms for five maps, i.e. noise).
    A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


_return_large_blocks_to_the_system()


@st.cache_resource(show_spinner=False)
def decoded_images() -> ByteLRU:
    return ByteLRU(DECODED_IMAGES_BYTES, sizeof=lambda image: image.rgb.nbytes)


def _decoded(key: tuple, load: Callable[[], LoadedImage]) -> LoadedImage:
    def decode() -> LoadedImage:
        with _DECODE_LOCK:
            image = load()
        image.rgb.flags.writeable = False  # shared by every session: nobody may draw on it
        return image

    return decoded_images().get_or_compute(key, decode)


def decode_bytes(data: bytes, name: str) -> LoadedImage:
    """An upload, decoded (and bounded to WORKING_MAX_SIDE) once per content and name."""
    return _decoded(("bytes", hashlib.sha256(data).hexdigest(), name), lambda: load_working_image(data, name))


def decode_path(path: str, mtime: float) -> LoadedImage:
    """A file, decoded (and bounded to WORKING_MAX_SIDE) once per path and modification time."""
    return _decoded(("path", path, mtime), lambda: load_working_image(path))


@st.cache_data(max_entries=64, show_spinner=False)
def thumbnail(path: str, side: int = 96) -> np.ndarray:
    return downscale_for_display(load_working_image(path).rgb, side)[0]


@st.cache_data(show_spinner=False)
def truths() -> dict[str, SampleTruth]:
    return sample_truths(SAMPLES)


def sample_names() -> list[str]:
    return sorted(p.name for p in SAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class Selection:
    image: LoadedImage
    explainer: Explainer
    device: str
    input_size: str = "default"  # cam_core.engine.INPUT_SIZES: what every method and page feeds the model
    truth: SampleTruth | None = None  # what the photo shows, when it is a bundled sample

    @property
    def backbone(self):
        return self.explainer.backbone


def _use_sample(name: str) -> None:
    st.session_state["sample"] = name
    st.session_state["image_source"] = "Sample"
    st.session_state["_sample_chosen"] = True


@st.dialog("Sample images", width="large")
def _browse_samples(names: list[str]) -> None:
    # A dialog, not a popover: its thumbnails are sent only when it is opened.
    if st.session_state.pop("_sample_chosen", False):
        # A click reruns only the dialog (a fragment); the whole page must see the new image.
        st.rerun(scope="app")
    cols = st.columns(6)
    for i, n in enumerate(names):
        with cols[i % 6]:
            st.image(thumbnail(str(SAMPLES / n)), width="stretch")
            st.button(Path(n).stem, key=f"thumb_{n}", on_click=_use_sample, args=(n,), width="stretch")
            if (truth := truths().get(n)) is not None:
                said = truth.classes or "ImageNet" in truth.shows
                st.caption(truth.shows + ("" if said else " · no ImageNet class"))


def _session_image(key: tuple, load: Callable[[], LoadedImage]) -> LoadedImage:
    """The session's image when key names it (no hashing of the upload, no cache look-up on
    every rerun, and it stays even when the shared cache has dropped it), else load()."""
    if st.session_state.get("last_image_key") == key and st.session_state.get("last_image") is not None:
        return st.session_state["last_image"]
    image = load()
    st.session_state["last_image_key"] = key
    return image


def _path_image(path: Path) -> LoadedImage:
    mtime = path.stat().st_mtime
    return _session_image(("path", str(path), mtime), lambda: decode_path(str(path), mtime))


def _image_sidebar() -> LoadedImage | None:
    source = st.radio("Image", ["Sample", "Upload", "Path"], horizontal=True, key="image_source")
    typed = None
    try:
        if source == "Sample":
            names = sample_names()
            if st.session_state.get("sample") not in names:
                st.session_state["sample"] = DEFAULT_SAMPLE if DEFAULT_SAMPLE in names else names[0]
            name = st.selectbox("Sample image", names, key="sample")
            if st.button("Browse samples", width="stretch"):
                _browse_samples(names)
            return _path_image(SAMPLES / name)
        if source == "Upload":
            up = st.file_uploader(f"Upload an image (up to {MAX_PIXELS // 1_000_000} megapixels)", key="upload",
                                  help=f"Larger than {WORKING_MAX_SIDE} px on its longest side: downscaled to it "
                                       "on upload (the maps are computed at the model's input size).")
            if up is None:
                st.info("Choose a file; until then the last image stays.")
                return None
            return _session_image(("upload", up.file_id, up.name), lambda: decode_bytes(up.getvalue(), up.name))
        typed = st.text_input("Path under " + ", ".join(str(d) for d in allowed_image_dirs()), key="image_path")
        if not typed:
            return None
        return _path_image(resolve_under(typed, allowed_image_dirs()))
    except ImageError as exc:
        st.error(str(exc))
    except (ValueError, OSError) as exc:
        # Whatever else a path or a file can raise (a NUL byte, a file gone or unreadable
        # between the check and the read): a message, and the last good image stays.
        what = repr(typed) if typed else "the image"
        st.error(f"{what}: cannot be read ({exc})")
    return None


def _backbone_sidebar(device: str) -> Explainer | None:
    offline = list(BACKBONES)
    choices = offline + EXTRA_BACKBONES + [HUB, CHECKPOINT]
    descriptions = {n: BACKBONES[n].description for n in offline}
    descriptions.update({"random:resnet18": "ResNet-18, random weights (no download)",
                         "random:deit_tiny_patch16_224": "DeiT-Tiny ViT, random weights (no download)"})
    # The name itself in the box (a description there was cut off at the sidebar's width); the
    # description, wrapped, under it.
    choice = st.selectbox("Backbone", choices, key="backbone_choice")
    if choice in descriptions:
        st.caption(descriptions[choice])
    kwargs: dict = {}
    name = choice
    if choice == HUB:
        name = st.text_input("timm model name (downloads weights)", key="hub_name")
    elif choice == CHECKPOINT:
        name = st.text_input("timm architecture", key="ckpt_arch")
        ckpt = st.text_input("Checkpoint (.safetensors or .pth) under the allowed folders", key="ckpt_path")
        names = st.text_input("Class names file (optional, one per line)", key="ckpt_names")
        if not ckpt:
            st.info("Type the checkpoint's path.")
            return None
        try:
            kwargs["checkpoint"] = str(resolve_under(ckpt, allowed_image_dirs()))
            if names:
                kwargs["class_names"] = str(resolve_under(names, allowed_image_dirs()))
        except ImageError as exc:
            st.error(str(exc))
            return None
        except (ValueError, OSError) as exc:  # e.g. a NUL byte in a typed path
            st.error(f"not a usable path ({exc})")
            return None
    try:
        explainer = get_explainer(name, device, **kwargs)
    except BackboneError as exc:
        st.error(str(exc))
        return None
    st.caption(explainer.backbone.source)
    return explainer


def _input_size_sidebar(bb, image: LoadedImage) -> str:
    """The input size fed to the model (INPUT_SIZES), offered as far as this backbone takes
    it: a ViT built for one size keeps it (the control is disabled, saying why)."""
    h0, w0 = bb.input_size
    labels = {"default": f"{h0} × {w0} (the model's)", "2x": f"2x: {2 * h0} × {2 * w0}",
              "3x": f"3x: {3 * h0} × {3 * w0}",
              "image": f"the image's own size (longer side ≤ {MAX_INPUT_SIDE})"}
    if bb.fixed_input_size:
        st.selectbox("Input size", ["default"], format_func=labels.__getitem__, disabled=True, key="input_size_fixed",
                     help=f"{bb.name} takes {h0} × {w0} inputs only: a ViT built for one input size.")
        return "default"
    choice = st.selectbox("Input size", INPUT_SIZES, key="input_size", format_func=labels.__getitem__,
                          help="What the image is resized to before the model. Larger inputs give finer maps "
                               "(a CNN's last stage has stride 32: 224 px -> 7 × 7, 448 px -> 14 × 14) and take "
                               "longer.")
    try:
        size = resolve_input_size(choice, image.size, bb)
    except InputSizeError as exc:
        st.error(str(exc))
        return "default"
    st.caption(f"fed to the model at {size[0]} × {size[1]}")
    return choice


SIDEBAR_DEFAULTS = {"image_source": "Sample", "sample": DEFAULT_SAMPLE, "hub_name": "resnet50", "ckpt_arch": "resnet18"}
SIDEBAR_KEYS = ("image_source", "sample", "image_path", "device", "backbone_choice", "hub_name", "ckpt_arch",
                "ckpt_path", "ckpt_names", "input_size")
# Each page's own controls, kept while the user is on the other page.
PAGE_KEYS = ("class_query", "class_pick", "topk", "methods", "cmap", "opacity", "norm", "threshold", "per_row",
             "show_raw", "fs_bank_name", "fs_folder", "fs_cap", "fs_colour", "fs_embed", "fs_perplexity",
             "fs_scale", "fs_target", "fs_threshold", "fs_use_bank", "gt_box", "ev_kind", "ev_folder", "ev_split",
             "ev_backbone", "ev_methods", "ev_metrics", "ev_metrics_folder", "ev_limit", "ev_gallery_mode",
             "ev_gallery_metric", "ev_gallery_method", "ev_gallery_other")
PAGE_KEY_PREFIXES = ("layer_", "param_", "fs_lp_", "fs_sipe_", "ev_layer_", "ev_param_")


# Download callables kept per (session, button position) beyond the ones the runs in progress
# reference: the one on the user's screen and the one replacing it.
KEPT_DOWNLOADS_PER_BUTTON = 2
KEPT_DOWNLOADS_PER_SESSION = 64  # and at most this many unreferenced ones per session


def keep_download_callables(mgr=None) -> bool:
    """Make a download button's deferred file outlive the run that drew it, until the button
    is off the user's screen.

    Streamlit (1.67) registers each deferred download_button callable under a new id on every
    run, forgets the session's ids when its next run starts, and at the end of ANY session's
    run drops every callable that no session currently references. So while a run is in
    progress (a slow tile computes for seconds; the page also reruns on every control), the
    buttons still on the screen point at ids that the next run end of any other session
    deletes: a click then shows "Failed to generate file for download" and the server logs
    "Deferred file ... not found" (NPY downloads failed 2 of 41 times under load). This
    wraps the manager's sweep so that it also keeps, per session and button position, the
    KEPT_DOWNLOADS_PER_BUTTON newest callables (at most KEPT_DOWNLOADS_PER_SESSION unreferenced
    ones per session). Touches MediaFileManager internals: where they are not as expected,
    nothing changes (and the click can fail as before). Returns whether the sweep is wrapped."""
    if mgr is None:
        try:
            from streamlit import runtime

            if not runtime.exists():
                return False
            mgr = runtime.get_instance().media_file_mgr
        except Exception:  # noqa: BLE001 - an internal that moved: keep Streamlit's behaviour
            return False
    if getattr(mgr, "_cam_keeps_downloads", False):
        return True
    needed = ("_remove_orphaned_deferred_callables", "_deferred_callables", "_files_by_session_and_coord",
              "_drop_deferred_id")
    if not all(hasattr(mgr, name) for name in needed):
        return False

    def sweep() -> None:  # called, like the original, with mgr._lock held
        referenced: set[str] = set()
        for by_coordinates in mgr._files_by_session_and_coord.values():
            referenced.update(by_coordinates.values())
        per_button: dict[tuple, list[str]] = {}
        for file_id, entry in mgr._deferred_callables.items():  # in registration order
            per_button.setdefault((entry.get("session_id"), entry.get("coordinates")), []).append(file_id)
        spare: dict[str, list[str]] = {}
        for (session_id, _), ids in per_button.items():
            spare.setdefault(session_id, []).extend(i for i in ids[-KEPT_DOWNLOADS_PER_BUTTON:] if i not in referenced)
        keep = set(referenced)
        order = {file_id: n for n, file_id in enumerate(mgr._deferred_callables)}
        for ids in spare.values():
            keep.update(sorted(ids, key=order.__getitem__)[-KEPT_DOWNLOADS_PER_SESSION:])
        for file_id in [f for f in mgr._deferred_callables if f not in keep]:
            mgr._drop_deferred_id(file_id)

    mgr._remove_orphaned_deferred_callables = sweep
    mgr._cam_keeps_downloads = True
    return True


def keep_widget_state() -> None:
    """Re-assigning keeps a widget's value when another page draws the same widget, or none
    (the other page's controls): otherwise Streamlit drops the state of widgets that the run
    before owned. Buttons and plots cannot be assigned: not listed."""
    for key in list(st.session_state):
        if key in SIDEBAR_KEYS or key in PAGE_KEYS or key.startswith(PAGE_KEY_PREFIXES):
            st.session_state[key] = st.session_state[key]


def sidebar() -> Selection:
    """The shared sidebar: image, backbone, device. Keeps the last good image/backbone when
    a new choice fails, so an error never blanks the app. Drawn by app.py on every run."""
    keep_download_callables()
    for key, value in SIDEBAR_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    keep_widget_state()
    with st.sidebar:
        st.header("Input")
        image = _image_sidebar()
        if image is not None:
            st.session_state["last_image"] = image
        image = st.session_state.get("last_image")
        if image is None:
            path = SAMPLES / DEFAULT_SAMPLE
            image = decode_path(str(path), path.stat().st_mtime)
        st.caption(f"{image.name} · {image.size[1]}×{image.size[0]}" + "".join(f" · {n}" for n in image.notes))

        devices = available_devices()
        device = st.selectbox("Device", devices, key="device", format_func=device_label)
        explainer = _backbone_sidebar(device)
        if explainer is not None:
            st.session_state["last_explainer"] = explainer
        explainer = st.session_state.get("last_explainer") or get_explainer(DEFAULT_BACKBONE, "cpu")
        input_size = _input_size_sidebar(explainer.backbone, image)
        with st.expander("Diagnostics"):
            st.caption(f"torch {torch.__version__} · {device_label(explainer.backbone.device)}")
            st.json(dict(explainer.stats), expanded=False)
    shown_sample = st.session_state.get("image_source") == "Sample" and image.name == st.session_state.get("sample")
    selection = Selection(image=image, explainer=explainer, device=str(explainer.backbone.device),
                          input_size=input_size, truth=truths().get(image.name) if shown_sample else None)
    st.session_state["selection"] = selection  # lets page tests read the live Explainer's stats
    return selection


_RUN = threading.local()  # the Selection and Working of the full run in progress on this script thread


def run_page(page, selection: Selection, working: Working | None = None) -> None:
    """app.py: run the page st.navigation chose, with this run's sidebar selection and running
    indicator."""
    _RUN.selection, _RUN.working = selection, working
    try:
        page.run()
    finally:
        _RUN.selection = _RUN.working = None


def page_working() -> Working | None:
    """The running indicator app.py drew in this run: a page hands it to its fragments
    (fragment_working)."""
    return getattr(_RUN, "working", None)


def page_selection() -> Selection:
    """What a page script starts from: the sidebar app.py drew in this run.

    Missing when Streamlit ran the page's file itself, without app.py: in the old
    pages/-folder mode that Streamlit keeps until app.py has called st.navigation once in
    the process (a fresh server's first request for a page URL such as /feature_space; and
    every AppTest run, which resets that mode). Then this run becomes app.py's run, for
    the same URL: its st.navigation ends that mode and runs this page with a selection."""
    selection = getattr(_RUN, "selection", None)
    if selection is None:
        runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
        st.stop()
    return selection


def _weak_image(image: LoadedImage) -> Callable[[], LoadedImage]:
    ref = weakref.ref(image)

    def get() -> LoadedImage:
        alive = ref()
        if alive is None:
            raise RuntimeError("this tile's image is no longer loaded: the page has moved on")
        return alive

    return get


def tile_png(image: LoadedImage, m: torch.Tensor, norm: str, opacity: float, cmap: str,
             threshold: float) -> Callable[[], bytes]:
    """A download button's callable: the tile at the image's own size, made when clicked.
    Built here, not as a lambda in the page, so that it holds the map and a weak reference to
    the image only: a lambda in a page script holds the whole run's globals (the forward pass,
    every result), and Streamlit keeps a button's callable while the session references it.
    A closed tab's session is dropped after server.disconnectedSessionTTL without being shut
    down (Streamlit 1.67), so its last callables stay for the life of the server."""
    get = _weak_image(image)

    def make() -> bytes:
        im = get()
        tile = render_tile(im.rgb, to_image_map(m, im.size, norm), opacity, cmap, threshold)
        return png_bytes(with_colorbar(tile, cmap, norm))

    return make


def tile_npy(image: LoadedImage, m: torch.Tensor, norm: str) -> Callable[[], bytes]:
    """As tile_png: the normalised map at the image's own size, float32 .npy, made when clicked."""
    get = _weak_image(image)

    def make() -> bytes:
        return npy_bytes(to_image_map(m, get().size, norm))

    return make


def grid_png(tiles: list[tuple[str, np.ndarray]], columns: int, title: str, cmap: str,
             norm: str) -> Callable[[], bytes]:
    """As tile_png: the sheet of these (caption, tile) pairs in this order, the settings
    (`title`) above them and one colour bar under them, made when clicked."""
    return lambda: png_bytes(compose_grid(tiles, columns=columns, title=title, cmap=cmap, norm=norm))


MAX_SHOWN_HEIGHT = 420  # px: a tall image (200 x 1200) or its tiles must leave the controls on screen


def shown_width(arr: np.ndarray) -> int | str:
    """st.image's width for an image array: the column's width, unless that would draw it
    taller than wide; then the width at which it is MAX_SHOWN_HEIGHT px high (Streamlit never
    draws an image wider than its column, so its height stays within the cap)."""
    h, w = arr.shape[:2]
    return "stretch" if h <= w else max(16, round(MAX_SHOWN_HEIGHT * w / h))


@dataclass
class Working:
    """The running indicator at the top of the sidebar: "Working…" and a Stop button while a
    run is in progress (the toolbar setting hides Streamlit's own). `box` holds it during full
    runs (app.py empties it when the run ends). A fragment's own reruns do not run app.py and
    cannot be interrupted by a widget of the fragment (Streamlit queues such a rerun after the
    one in progress), so their Stop is drawn by the full run, hidden, in a row whose `slot`
    the fragment fills while it reruns (fragment_working): the click is then a full rerun,
    which interrupts the fragment's at its next element."""

    box: object
    slot: object

    def done(self) -> None:
        self.box.empty()


STOP_KEYS = ("stop_all", "stop_fragment")  # the Stop of a full run, of a fragment rerun
FRAGMENT_ROW = "fragment_working"  # the key of the fragment's row, and so its CSS class st-key-...
WORKING = ":material/progress_activity: **Working…**"
STOP_HELP = "Stop what the page is computing: slow work stays stopped until you click its Run it."


def working_indicator() -> Working:
    """app.py, first thing in every run: the running indicator, shown. Its Stop button
    interrupts the run (any click does) and stops the slow work of the next one
    (stop_all_requested)."""
    box = st.sidebar.empty()
    with box.container(horizontal=True, vertical_alignment="center"):
        st.markdown(WORKING)
        st.button("Stop", key="stop_all", icon=":material/stop_circle:", help=STOP_HELP)
    row = st.sidebar.container(key=FRAGMENT_ROW, horizontal=True, vertical_alignment="center")
    row.markdown(f"<style>.st-key-{FRAGMENT_ROW} {{display: none}}</style>", unsafe_allow_html=True)  # first: never seen
    slot = row.empty()
    row.button("Stop", key="stop_fragment", icon=":material/stop_circle:", help=STOP_HELP)
    return Working(box, slot)


@contextmanager
def fragment_working(working: Working | None):
    """Around an st.fragment's body: during the fragment's own reruns (a slider inside it; a
    t-SNE can take seconds), the running indicator and its Stop in the sidebar, until the body
    ends. On a full run app.py's indicator is up already; the fragment still writes its slot
    (empty), since Streamlit lets a fragment rerun write to a container made outside it only
    where the fragment wrote during the last full run."""
    if working is None:  # not under app.py (a page function called on its own)
        yield
        return
    if getattr(_RUN, "selection", None) is not None:  # a full run (run_page in progress on this thread)
        working.slot.empty()
        yield
        return
    with working.slot.container():
        st.markdown(WORKING)
        st.markdown(f"<style>.st-key-{FRAGMENT_ROW} {{display: flex !important}}</style>", unsafe_allow_html=True)
    try:
        yield
    finally:
        working.slot.empty()


def stop_all_requested() -> bool:
    """The Stop of the running indicator was clicked (a full run's, or a fragment rerun's: both
    make a full rerun): this run starts no slow work."""
    return any(bool(st.session_state.get(key)) for key in STOP_KEYS)


def explain_class(index: int) -> None:
    """A top-5 button or "Explain this class": that class alone, also from the top-k view."""
    st.session_state["target"] = index
    st.session_state["topk"] = 1


def drop_stale_choice(key: str, options) -> None:
    """A kept selectbox/multiselect value that the new image or backbone no longer offers
    (a ViT-only method on a CNN, another image's top class) is dropped before the widget."""
    if key not in st.session_state:
        return
    value, options = st.session_state[key], list(options)
    if isinstance(value, list):
        if any(v not in options for v in value):
            st.session_state[key] = [v for v in value if v in options]
    elif value not in options:
        del st.session_state[key]


def param_input(p: Param, label: str, key: str, slider: bool = False, container=None, idle: str | None = None):
    """The widget for one declared method parameter: choices -> selectbox, bool -> toggle,
    numbers -> slider or number input within the declared range. idle: why the parameter has
    no effect now (MethodSpec.idle_params): the widget is disabled and its help says why."""
    ui = container or st
    disabled = idle is not None
    help_ = p.help if idle is None else f"{p.help} Not used now: {idle}."
    if p.choices:
        index = first_value(key, p.choices.index(p.default), 0)
        return ui.selectbox(label, p.choices, index=index, key=key, help=help_, disabled=disabled)
    if isinstance(p.default, bool):
        return ui.toggle(label, value=first_value(key, p.default, False), key=key, help=help_, disabled=disabled)
    if isinstance(p.default, str):
        return ui.text_input(label, value=first_value(key, p.default, ""), key=key, help=help_, disabled=disabled)
    if slider and p.min is not None and p.max is not None:
        kind = type(p.default)
        return ui.slider(label, kind(p.min), kind(p.max), first_value(key, p.default), kind(p.step or 1), key=key,
                         help=help_, disabled=disabled)
    return ui.number_input(label, min_value=p.min, max_value=p.max, value=first_value(key, p.default, "min"),
                           step=p.step, key=key, help=help_, disabled=disabled)


def first_value(key: str, value, unset=None):
    """A widget's default, given only on its first draw; later `unset`, the argument by which
    that widget means "no default" (None for sliders, 0 for a selectbox's index, False for a
    toggle, "" for a text input, "min" for a number input: None would make those two
    clearable). Once the key is in Session State (the sidebar re-assigns every page key on each
    run, so that it outlives a visit to the other page), a default as well makes Streamlit log
    "created with a default value but also had its value set via the Session State API"; the
    state's value is the one shown either way."""
    return value if key not in st.session_state else unset


def layer_help(specs) -> str:
    """The "Feature layer" help: which of these methods (MethodSpec) read their own features
    and so ignore the layer, from each spec's declared needs."""
    own = [s.label for s in specs if not s.reads_layer]
    if not own:
        return "Every method offered reads this layer's features."
    return ("The methods that read a layer's features use this one. " + ", ".join(own) + " read their own (the "
            "features the classifier pools, several stages, or the attention maps) and ignore it.")
