"""Feature Space page: pixels, class centres and prototypes in one map; LPCAM and SIPE tuned live."""

from __future__ import annotations

import html
import json
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from cam_core import BankError, Cancelled, Explainer, PrototypeBank, build_bank, folder_items
from cam_core.featurespace import (
    BANK_BG,
    BANK_FG,
    CENTRE,
    LP_CLASS,
    LP_CONTEXT,
    PIXEL,
    PROTOTYPE_KINDS,
    SIPE_PROTO,
    Embedding,
    DictionaryView,
    PointCloud,
    base_cloud,
    dictionary_view,
    embed,
    is_cicam,
    prototype_cloud,
    similarity_map,
    spread_labels,
)
from cam_core.engine import MAX_INPUT_SIDE, resolve_input_size
from cam_core.images import ImageError, resolve_under
from cam_core.methods import get_method
from cam_core.prototypes import saved_banks
from cam_core.render import (
    LABEL_COLOURS,
    colorize,
    downscale_for_display,
    group_colours,
    hex_colour,
    highlight,
    label_overlay,
    render_tile,
    resize_nearest,
    to_image_map,
    upsample,
)
from ui.common import (
    USER_ERRORS,
    Selection,
    Working,
    allowed_image_dirs,
    bank_dir,
    drop_stale_choice,
    first_value,
    fragment_working,
    page_selection,
    page_working,
    param_input,
    stop_all_requested,
)

HOW_TO_READ = """
**The points.** Each dot is one pixel of the feature map the classifier reads (the features it
pools), of the image at the chosen size, as an L2-normalised vector: the plot is a map of
directions, where cosine similarity is what counts.

**Class centres (stars)** are the classifier's weight rows, one per top-5 class. A pixel's CAM for a
class is the dot product of its feature with that row: the pixels lying towards a star are the ones
CAM lights up for it. Near-synonym classes (tabby, tiger cat, Egyptian cat) have centres close together.

**LPCAM's prototypes (diamonds).** The class's foreground pixels (CAM above tau) and the rest (the
context) are clustered apart by K-means. The foreground clusters the classifier still takes for the
class are the *class prototypes* (filled); context clusters related to the class (water for a boat) are
the *context prototypes* (open). LPCAM is the similarity to the class prototypes minus that to the context
prototypes, so it also covers the parts CAM misses. Their pixels come from this image, or from a bank.

**SIPE's seeds (squares).** SIPE seeds a pixel with a class where the pixel's similarity to every other
pixel overlaps that class's CAM best; the rest is background. A square is the mean feature of one seed
region (SIPE's own prototype lives in several stages' features; here it is shown in the classifier's).

**Reading distances.** t-SNE keeps neighbourhoods: points close together have similar features. The
distances between groups, their sizes and densities and the axes mean nothing, and the prototypes are
placed into a finished map, so where they land is approximate. PCA is a projection on the two directions
of largest spread: points far apart in it are far apart in feature space, but points close in it need
not be. For the true similarity, click a star or a prototype: the map beside the plot shows the cosine
of every pixel to it.
"""
THIS_IMAGE = "this image (its own pixels)"
KMEANS = "K-means cluster (LPCAM)"
KMEANS_LEGEND = (
    "K-means of LPCAM: the foreground pixels (CAM > tau) and the context pixels (the rest) are clustered "
    "apart, K clusters each (numbered as in *Clusters and what the classifier says of them*). Warm colours: "
    "foreground clusters; cool colours: context clusters. **class k**: a foreground cluster that the "
    "classifier takes for the class, one of LPCAM's class prototypes; **fg k**: a foreground cluster it "
    "does not; **context k**: a context cluster that LPCAM subtracts, a context prototype; **bg k**: a "
    "context cluster it leaves out.")
BUILD = "build from a folder…"
DATASET = object()  # bank_panel's answer: the backbone's dataset bank
MARKERS = {PIXEL: "circle", BANK_FG: "circle-open", BANK_BG: "x-thin-open", CENTRE: "star",
           LP_CLASS: "diamond", LP_CONTEXT: "diamond-open", SIPE_PROTO: "square"}
KIND_COLOURS = {BANK_FG: "#e377c2", BANK_BG: "#7f7f7f", CENTRE: "#d62728", LP_CLASS: "#2ca02c",
                LP_CONTEXT: "#9467bd", SIPE_PROTO: "#ff7f0e"}


# ----- where LPCAM's class features come from ----------------------------------------------
@st.cache_resource(max_entries=8, show_spinner=False)
def load_bank(path: str, mtime: float) -> PrototypeBank:
    return PrototypeBank.load(path)


def _last_bank_file():
    return bank_dir() / "last.json"


def _remember_bank(backbone_name: str, name: str) -> None:
    last = {}
    if _last_bank_file().exists():
        last = json.loads(_last_bank_file().read_text() or "{}")
    last[backbone_name] = name
    bank_dir().mkdir(parents=True, exist_ok=True)
    _last_bank_file().write_text(json.dumps(last))


def dataset_bank(ex: Explainer) -> PrototypeBank | None:
    """The backbone's dataset bank (cam_core.banks): built on the first use with a progress bar
    (a click elsewhere interrupts it), then loaded from the disk cache."""
    name = ex.backbone.default_bank.name
    bar = st.progress(0.0, text=f"LPCAM's bank from {name}: building it once (then cached on disk)…")
    try:
        return ex.default_bank(progress=lambda d, t: bar.progress(d / t, text=f"{name}: {d}/{t} images"))
    except (*USER_ERRORS, OSError) as exc:
        st.error(f"LPCAM's bank from {name}: {exc}")
        return None
    finally:
        bar.empty()


def bank_panel(ex: Explainer, target: int) -> PrototypeBank | None:
    bb = ex.backbone
    saved = {p.name: p for p, _ in saved_banks(bank_dir(), bb.name)}
    # A backbone that declares its dataset uses that dataset's bank unless another is chosen;
    # LPCAM's `source` control still switches to the image's own pixels.
    default = THIS_IMAGE if bb.default_bank is None else f"{bb.default_bank.name} (this backbone's dataset)"
    options = [default, *saved, BUILD]
    last = json.loads(_last_bank_file().read_text() or "{}").get(bb.name) if _last_bank_file().exists() else None
    widget_key = f"fs_bank_{bb.name}"
    pending = st.session_state.pop("fs_bank_pending", None)
    if pending in options:  # a bank just built: select it (before the widget exists in this run)
        st.session_state[widget_key] = pending
    if st.session_state.get(widget_key) not in options:  # first visit (or the file is gone)
        st.session_state[widget_key] = last if last in options else default
    with st.expander("Prototype bank: where LPCAM's class features come from", expanded=False):
        for note in st.session_state.pop("fs_bank_notes", []):
            st.warning(note)
        choice = st.selectbox("Bank", options, key=widget_key,
                              help=f"Saved banks of {bb.name} in {bank_dir()}; they are there again on the next start.")
        if choice == BUILD:
            _build_bank_form(ex)
            return None
        if choice != default:
            path = saved[choice]
            try:
                bank = load_bank(str(path), path.stat().st_mtime)
                bank.check_fits(bb)
            except BankError as exc:
                st.error(str(exc))
                return None
            if last != choice:
                _remember_bank(bb.name, choice)
            st.caption(bank.describe(bb.short_name))
            if target not in bank.classes:
                st.info(f"This bank has no images of {bb.short_name(target)}: LPCAM uses the image's own pixels.")
            return bank
        if last not in (None, default):
            _remember_bank(bb.name, default)
        if bb.default_bank is not None:
            st.caption(f"LPCAM clusters the pixels of {bb.default_bank.name} (the bank is built once, then cached "
                       "on disk); its `source` control switches to this image's own pixels.")
            return DATASET  # built below, outside the collapsed expander, so its progress shows
        st.caption("LPCAM clusters this image's own pixels (source (a) of the paper's recipe).")
    return None


def _build_bank_form(ex: Explainer) -> None:
    folder = st.text_input("Folder (ImageFolder layout: class = subfolder; or flat: labelled by the "
                           "model's top-1), under " + ", ".join(str(d) for d in allowed_image_dirs()),
                           first_value("fs_folder", str(allowed_image_dirs()[0]), ""), key="fs_folder")
    name = st.text_input("Bank name", first_value("fs_bank_name", "samples", ""), key="fs_bank_name")
    st.button("Build and save", key="fs_build", on_click=st.session_state.__setitem__,
              args=("fs_build_requested", True))
    if not st.session_state.pop("fs_build_requested", False):
        return
    try:
        scan = folder_items(resolve_under(folder, allowed_image_dirs()), ex.backbone.class_names)
        bar = st.progress(0.0, text="reading images…")
        st.button("Stop", key="fs_build_stop")  # clicking it interrupts this run
        report = build_bank(ex, scan.items, name=name,
                            progress=lambda d, t: bar.progress(d / t, text=f"{d}/{t} images"))
        path = report.bank.save(bank_dir() / f"{name}.safetensors")
        st.session_state["fs_bank_notes"] = [f"skipped {line}" for line in report.skipped] + \
            [f"ignored {line}" for line in scan.ignored]
        _remember_bank(ex.backbone.name, path.name)
        st.session_state["fs_bank_pending"] = path.name
        st.rerun()
    except (ImageError, BankError, Cancelled) as exc:
        st.error(str(exc))


@st.cache_resource(show_spinner=False)
def embedding_store() -> OrderedDict:
    # Embeddings by point-set key (objects kept, for placing prototypes later); shared, small.
    return OrderedDict()


def get_embedding(cloud: PointCloud, method: str, perplexity: float, slot, stop: bool = False
                  ) -> tuple[Embedding, tuple | None]:
    """The cached embedding of `cloud`, and None; a t-SNE shows its progress in `slot` (an
    st.empty that the page draws on every run, so that nothing else ever takes the bar's place).
    stop: the user clicked Stop for this run. A t-SNE not made yet is then not started, and
    stays stopped for this point set until its Run it (the key returned in place of None,
    with the PCA that stands in for it): the click interrupted the t-SNE in progress, and any
    later run would otherwise start it again."""
    store = embedding_store()
    key = (cloud.key, method, perplexity)
    stopped = st.session_state.setdefault("fs_tsne_stopped", set())
    if method == "tsne" and key not in store:
        if stop:
            stopped.add(key)
        if key in stopped:
            return get_embedding(cloud, "pca", perplexity, slot)[0], key
    if key not in store:
        progress = None
        if method == "tsne":
            slot.progress(0.0, text="t-SNE…")
            progress = lambda f: slot.progress(f, text=f"t-SNE {f:.0%}")  # noqa: E731
        store[key] = embed(cloud, method, perplexity, progress=progress)
        while len(store) > 16:
            store.popitem(last=False)
    return store[key], None


def timed(fn):
    """(fn(), milliseconds it took)"""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


# ----- everything tuned live: one fragment, so a slider reruns only this part -----------------
# Inside it: widgets first, then every computation, then the images and the plot. Images sent
# early make the server thread and the browser busy (GIL and CPU) while the maps compute:
# measured 10-20x slower K-means and drawing on the 2-core machine.
@dataclass
class Controls:
    """The fragment's widget values, and the places its outputs go above the plot."""

    threshold: float
    lp_params: dict
    sp_params: dict
    method: str
    perplexity: int
    scale: float
    cap: int
    use_bank: bool
    colour_by: str
    threshold_caption: object  # st.empty() under the threshold slider
    lp_out: object  # LPCAM's column
    sp_out: object  # SIPE's column
    dict_out: object  # under them: CI-CAM's dictionary (a CI-CAM backbone only, else None)
    progress_slot: object  # st.empty() above the plot: t-SNE's progress bar, then nothing


@dataclass
class Computed:
    """Everything the fragment draws, computed before any of it is sent."""

    display: np.ndarray
    cam: object  # CamResult
    lp: object  # CamResult or None (then lp_err says why)
    lp_ms: float
    lp_err: str | None
    sp: object
    sp_ms: float
    sp_err: str | None
    tiles: dict
    render_ms: float
    fwd: object
    cloud: PointCloud
    emb: Embedding
    stopped: tuple | None  # a t-SNE stopped by the user (emb is a PCA then): its key in fs_tsne_stopped
    protos: PointCloud
    coords: np.ndarray
    kinds: list
    labels: list
    values: list
    palette: dict | None  # category -> colour, in legend order; None: values are map values in [0, 1]
    dictionary: DictionaryView | None  # CI-CAM's dictionary and attention for this image (CI-CAM backbones)


class NoEmbedding(Exception):
    """The plot's embedding could not be made (shown as a message; the rest of the page stays)."""


@st.fragment
def tuning(sel: Selection, preds: list, target: int, bank: PrototypeBank | None, working: Working | None) -> None:
    """sel: the sidebar's selection of the full run (image, explainer, input size): every map and
    the pixel cloud are computed at sel.input_size. working: app.py's running indicator, shown
    during the fragment's own reruns too."""
    st.session_state["fs_fragment_runs"] = st.session_state.get("fs_fragment_runs", 0) + 1
    with fragment_working(working):
        fed = resolve_input_size(sel.input_size, sel.image.size, sel.backbone)
        controls = _controls(sel.backbone, bank, fed)
        try:
            out = _compute(sel, preds, target, bank, controls)
        except NoEmbedding as exc:
            st.error(str(exc))
            return
        _render(sel, preds, target, controls, out)


# The pixel cloud's extra scale, relative to the input size. Offered while the copy's longer side
# stays within MAX_CLOUD_SIDE: its forward pass grows with the square of the side (Lite0 at
# 1792 px: ~1-2 s on 2 CPU cores), and the point cap subsamples the grid anyway.
CLOUD_SCALES = (1.0, 2.0, 3.0, 4.0)
MAX_CLOUD_SIDE = 2 * MAX_INPUT_SIDE


def scaled_size(fed: tuple[int, int], scale: float) -> tuple[int, int]:
    """The size of the input resized by `scale`, as ForwardPass.features_at computes it."""
    return max(1, round(fed[0] * scale)), max(1, round(fed[1] * scale))


def cloud_scales(fed: tuple[int, int]) -> list[float]:
    """The "Image at" scales offered for an input of size `fed`: 1x always."""
    return [s for s in CLOUD_SCALES if s == 1.0 or max(scaled_size(fed, s)) <= MAX_CLOUD_SIDE]


def _controls(bb, bank: PrototypeBank | None, fed: tuple[int, int]) -> Controls:
    """fed: the (height, width) the image is fed to the model at (the sidebar's input size)."""
    # Defaults through first_value: see there (issue 9 item 13, Streamlit's "default value but also set" warning).
    threshold = st.slider("Display threshold (contour and box; 0 = off)", 0.0, 1.0, first_value("fs_threshold", 0.0),
                          0.05, key="fs_threshold")
    threshold_caption = st.empty()
    left, right = st.columns(2)
    left.subheader("LPCAM")
    cols = left.columns(2)
    lpcam = get_method("lpcam")
    # Which parameters the chosen rule leaves without effect, from the values of this run (the
    # rule's widget comes after mu_f and mu_b, but its new value is in Session State already).
    idle = lpcam.idle_params({p.name: st.session_state[f"fs_lp_{p.name}"] for p in lpcam.params
                              if f"fs_lp_{p.name}" in st.session_state}, bb)
    lp_params = {p.name: param_input(p, p.name, key=f"fs_lp_{p.name}", container=cols[i % 2],
                                     slider=p.name in ("k", "tau", "mu_f", "mu_b", "mu_low", "rank"),
                                     idle=idle.get(p.name))
                 for i, p in enumerate(lpcam.params)}
    if idle:
        left.caption(f"Not used now: {', '.join(idle)}: " + "; ".join(dict.fromkeys(idle.values())) + ".")
    lp_out = left.container()
    right.subheader("SIPE")
    sp_params = {p.name: param_input(p, p.name, key=f"fs_sipe_{p.name}", slider=True, container=right)
                 for p in get_method("sipe").params}
    sp_out = right.container()
    dict_out = st.container() if is_cicam(bb) else None
    st.subheader("Pixels, class centres and prototypes")
    e1, e2, e3, e4 = st.columns(4)
    method = e1.radio("Embedding", ["pca", "tsne"], horizontal=True, key="fs_embed",
                      format_func={"pca": "PCA (instant)", "tsne": "t-SNE"}.get)
    perplexity = e1.slider("Perplexity", 5, 50, first_value("fs_perplexity", 30), key="fs_perplexity",
                           disabled=method != "tsne")
    if bb.fixed_input_size:
        scale = 1.0
        e2.caption(f"Image at 1× only: {bb.name} takes {fed[0]} × {fed[1]} px inputs.")
    else:
        scales = cloud_scales(fed)
        drop_stale_choice("fs_scale", scales)
        names = {s: "{:g}× ({} × {} px)".format(s, *scaled_size(fed, s)) for s in scales}
        scale = e2.select_slider("Image at", scales, first_value("fs_scale", 2.0 if 2.0 in scales else scales[-1]),
                                 key="fs_scale", format_func=names.__getitem__,
                                 help=f"Relative to the input size ({fed[0]} × {fed[1]} px, the sidebar's): a larger "
                                      "copy of the image gives more pixel points (the feature grid grows).")
    cap = e2.number_input("Most pixel points", 100, 20000, first_value("fs_cap", 5000, "min"), 100, key="fs_cap")
    use_bank = e3.toggle("Bank pixels too", value=first_value("fs_use_bank", bank is not None, False), key="fs_use_bank",
                         disabled=bank is None)
    colour_by = e4.selectbox("Colour pixels by", ["CAM", "LPCAM", "Grad-CAM", "SIPE IS-CAM", "SIPE seed", KMEANS],
                             key="fs_colour")
    return Controls(threshold, lp_params, sp_params, method, perplexity, scale, int(cap), use_bank, colour_by,
                    threshold_caption, lp_out, sp_out, dict_out, st.empty())


def _compute(sel: Selection, preds: list, target: int, bank: PrototypeBank | None, c: Controls) -> Computed:
    """Every map, the point clouds and their embedding (all cached by the explainer or the
    embedding store), at the sidebar's input size. Raises NoEmbedding when the embedding cannot
    be made."""
    ex, image, size_in = sel.explainer, sel.image, sel.input_size
    display, _ = downscale_for_display(image.rgb, 480)
    size = display.shape[:2]
    lp = sp = None
    lp_ms = sp_ms = 0.0
    lp_err = sp_err = None
    try:
        lp, lp_ms = timed(lambda: ex.compute(image, "lpcam", target, params=c.lp_params, bank=bank,
                                                input_size=size_in))
        if "selection" not in lp.extras:  # no pixel of the class to cluster: an empty map, its note says why
            lp, lp_err = None, lp.note
    except USER_ERRORS as exc:
        lp_err = str(exc)
    try:
        sp, sp_ms = timed(lambda: ex.compute(image, "sipe", target, params=c.sp_params, input_size=size_in))
    except USER_ERRORS as exc:
        sp_err = str(exc)
    cam = ex.compute(image, "cam", target, input_size=size_in)
    t0 = time.perf_counter()
    tiles = {"CAM": render_tile(display, to_image_map(cam.map, size, "max"), 0.5, "jet", c.threshold)}
    if lp is not None:
        tiles["LPCAM"] = render_tile(display, to_image_map(lp.map, size, "max"), 0.5, "jet", c.threshold)
    if sp is not None:
        tiles["IS-CAM"] = render_tile(display, to_image_map(sp.map, size, "max"), 0.5, "jet", c.threshold)
    render_ms = (time.perf_counter() - t0) * 1000
    fwd = ex.forward(image, input_size=size_in)
    cloud = base_cloud(fwd, [p.index for p in preds], c.scale, bank if c.use_bank else None, target,
                       c.lp_params["tau"], c.cap)
    try:
        emb, stopped = get_embedding(cloud, c.method, c.perplexity, c.progress_slot, stop_all_requested())
    except (Cancelled, ValueError) as exc:  # t-SNE cancelled, or too few points for it
        raise NoEmbedding(str(exc)) from exc
    protos = prototype_cloud(lp, sp, fwd)
    placed = emb.place(protos.vectors)
    coords = np.concatenate([emb.coords, placed]) if len(placed) else emb.coords
    values, palette = _pixel_colours(sel, c.colour_by, cloud, lp, sp, target)
    dictionary = dictionary_view(fwd) if c.dict_out is not None else None
    return Computed(display, cam, lp, lp_ms, lp_err, sp, sp_ms, sp_err, tiles, render_ms, fwd, cloud, emb, stopped,
                    protos, coords, cloud.kinds + protos.kinds, cloud.labels + protos.labels, values, palette,
                    dictionary)


def _render(sel: Selection, preds: list, target: int, c: Controls, out: Computed) -> None:
    ex, image = sel.explainer, sel.image
    c.threshold_caption.caption(f"Threshold: drawing the tiles took {out.render_ms:.1f} ms")
    c.progress_slot.empty()
    with c.lp_out:
        _lpcam_panel(out)
    with c.sp_out:
        _sipe_panel(ex.backbone, out)
    if c.dict_out is not None:
        with c.dict_out:
            _dictionary_panel(ex.backbone, out.display, out.dictionary)
    fig = _figure(out.coords, out.kinds, out.labels, out.cloud, out.values, out.palette, c.colour_by, image.size)
    # A short title: the plot column is ~600 px wide at a 1280 px window; the rest goes in a caption.
    fig.update_layout(title_y=0.97, title=f"{out.emb.method.upper()} of {len(out.cloud)} points + "
                      f"{len(out.protos)} prototypes")
    plot_col, view_col = st.columns([3, 2])
    with plot_col:
        if out.stopped is not None:
            st.warning("t-SNE stopped: the plot shows PCA until you click Run it.")
            st.button("Run it", key="fs_tsne_resume", on_click=st.session_state["fs_tsne_stopped"].discard,
                      args=(out.stopped,))
        event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key="fs_plot",
                                width="stretch")
        fed = scaled_size(tuple(out.fwd.input.shape[-2:]), c.scale)
        st.caption(f"{out.emb.method.upper()} of the pixels and centres computed in {out.emb.seconds:.1f} s (cached); "
                   f"the {len(out.protos)} prototypes placed into it. Pixels: the {out.cloud.grid[0]} × "
                   f"{out.cloud.grid[1]} feature grid of the image at {c.scale:g}× the input ({fed[0]} × {fed[1]} px).")
        if c.colour_by == KMEANS and out.palette is not None:
            st.caption(KMEANS_LEGEND)
    with view_col:
        _selection_view(out, preds, target, c.scale, c.threshold, _selected_indices(event))
    with st.expander("Diagnostics"):
        st.caption(f"page runs: {st.session_state['fs_page_runs']} · fragment runs: "
                   f"{st.session_state['fs_fragment_runs']} · explainer: {dict(ex.stats)}")


def _lpcam_panel(out: Computed) -> None:
    if out.lp is None:
        st.error(out.lp_err)
        return
    lp = out.lp
    sel_ = lp.extras["selection"]
    st.caption(f"LPCAM: {lp.ms:.0f} ms to compute (K-means of it: {sel_.kmeans_ms:.0f} ms, only "
               f"when K or tau change); this run {out.lp_ms:.0f} ms · {size_note(lp)} · {sel_.n_fg} foreground / "
               f"{sel_.n_bg} context pixels · {lp.note}")
    c1, c2 = st.columns(2)
    c1.image(out.tiles["CAM"], caption=f"CAM · {size_note(out.cam)}", width="stretch")
    c2.image(out.tiles["LPCAM"], caption=f"LPCAM · {size_note(lp)}", width="stretch")
    with st.expander("Clusters and what the classifier says of them"):
        st.dataframe(_cluster_rows(sel_), hide_index=True, width="stretch")


def _sipe_panel(bb, out: Computed) -> None:
    if out.sp is None:
        st.error(out.sp_err)
        return
    sp = out.sp
    size = out.display.shape[:2]
    seeds = sp.extras["seeds"].cpu().numpy()
    names = _seed_names(bb, sp)
    share = ", ".join(f"{n}: {(seeds == j).mean():.0%}" for j, n in enumerate(names))
    st.caption(f"SIPE: {sp.ms:.0f} ms to compute; this run {out.sp_ms:.0f} ms · {size_note(sp)} · seeds {share}")
    c1, c2 = st.columns(2)
    c1.image(label_overlay(out.display, resize_nearest(seeds, size)), width="stretch",
             caption="seeds (tinted: the image's classes; clear: background)")
    c1.html(_legend_html(names[1:], _seed_colours(len(names))[1:]))
    c2.image(out.tiles["IS-CAM"], caption=f"IS-CAM · {size_note(sp)}", width="stretch")


DICTIONARY_TITLE = "CI-CAM dictionary"
DICTIONARY_CAPTION = (
    "CI-CAM keeps one class CAM per class: over training, each image the up branch classified right adds its CAM "
    "of its top-1 class to that class's entry, standardised, as a moving average (the entries are standardised "
    "again after every update). For an image, the entry of the up branch's top-1 class becomes, through a 1×1 "
    "convolution, an attention A with one value per feature channel and pixel, and the down branch reads the "
    "re-weighted features F + A·F: its CAM is CI-CAM's map. A depends on the top-1 class only; how much it "
    "changes the features depends on the image.")
USED = "used for this image"


def _dictionary_panel(bb, display: np.ndarray, view: DictionaryView) -> None:
    """CI-CAM's dictionary (every entry, by class name, on one colour scale; the top-1 class's
    entry marked), and what its attention does to this image."""
    st.subheader(DICTIONARY_TITLE)
    st.caption(DICTIONARY_CAPTION)
    entries = view.entries
    lo, hi = float(entries.min()), float(entries.max())
    per_row = min(8, len(entries))
    for start in range(0, len(entries), per_row):
        cols = st.columns(per_row)
        for k in range(start, min(start + per_row, len(entries))):
            used = k == view.top1
            caption = f"{bb.short_name(k)} · up {float(view.up_probs[k]):.0%}" + (f" · {USED}" if used else "")
            cols[k - start].image(_entry_tile(entries[k], lo, hi, used), caption=caption, width="stretch")
    st.caption(f"The entries on one colour scale, from {lo:.2f} (blue) to {hi:.2f} (red), standardised units; "
               f"framed: the entry of the up branch's top-1 class, {bb.short_name(view.top1)}, the one the attention "
               "was made from for this image (up: the up branch's sigmoid score of each class)."
               + ("" if view.down_top1 == view.top1 else
                  f" The network's prediction (the down branch's top-1) is {bb.short_name(view.down_top1)}."))
    size = display.shape[:2]
    share, norm = view.change_share, view.attention_norm
    c1, c2, c3 = st.columns(3)
    c1.image(render_tile(display, to_image_map(view.entry_used, size, "minmax"), 0.5, "jet"), width="stretch",
             caption=f"the {bb.short_name(view.top1)} entry on this image's {view.grid[0]} × {view.grid[1]} grid")
    c2.image(render_tile(display, to_image_map(norm, size, "minmax"), 0.5, "jet"), width="stretch",
             caption=f"attention magnitude ‖A‖ per pixel (over the channels): {float(norm.min()):.2f} … "
                     f"{float(norm.max()):.2f}")
    c3.image(render_tile(display, to_image_map(share, size, "minmax"), 0.5, "jet"), width="stretch",
             caption=f"change ‖A·F‖ / ‖F‖ per pixel: {float(share.min()):.0%} … {float(share.max()):.0%} "
                     f"(whole image: {view.overall_share:.0%})")


def _entry_tile(entry: torch.Tensor, lo: float, hi: float, used: bool, side: int = 96) -> np.ndarray:
    """One dictionary entry as a heatmap, `side` px square, on the scale lo..hi shared by all
    entries; the used entry framed: black outside (seen on the page's white), white inside."""
    m = ((upsample(entry, (side, side)) - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()
    tile = colorize(m, "jet")
    if used:
        tile = tile.copy()
        for width, colour in ((6, 255), (3, 0)):
            tile[:width], tile[-width:], tile[:, :width], tile[:, -width:] = colour, colour, colour, colour
    return tile


def size_note(res) -> str:
    """What a map was computed from, as the Compare page's tiles say it: the size the image was
    fed to the model at, and the feature grid the method read."""
    return f"input {res.input_size[0]} × {res.input_size[1]} · grid {res.grid[0]} × {res.grid[1]}"


def _legend_html(names: list[str], colours: list[str]) -> str:
    """A one-line legend: a colour swatch before each name (names escaped: a checkpoint's class
    names file is the user's text)."""
    items = "".join(f'<span style="margin-right:0.8em;white-space:nowrap"><span style="color:{c}">■</span> '
                    f"{html.escape(n)}</span>" for n, c in zip(names, colours))
    return f'<div style="font-size:0.85em">{items}</div>'


def _selection_view(out: Computed, preds: list, target: int, scale: float, threshold: float,
                    chosen: list[int]) -> None:
    """Right of the plot: where the selected pixels are, or the similarity map of a centre or
    prototype (clicked in the plot, or picked in the list: the latest of the two)."""
    cloud, protos, kinds, labels, display = out.cloud, out.protos, out.kinds, out.labels, out.display
    size = display.shape[:2]
    h, w = cloud.grid
    # Also a list: a click on a small marker is easy to miss, and a list works by keyboard.
    pickable = [i for i, k in enumerate(kinds) if k == CENTRE or k in PROTOTYPE_KINDS]
    chosen = [i for i in chosen if 0 <= i < len(kinds)]  # a selection made on an earlier figure
    sel_pixels = [i for i in chosen if kinds[i] == PIXEL]
    clicked = [i for i in chosen if kinds[i] != PIXEL]
    list_key = f"fs_sim_{cloud.key}_{protos.key}"
    # A new click on a centre or prototype moves the list to it (before the list is drawn);
    # the same selection seen again on a later rerun does not, so a later list choice wins.
    if clicked != st.session_state.get("fs_clicked_seen"):
        st.session_state["fs_clicked_seen"] = clicked
        if clicked and clicked[0] in pickable:
            st.session_state[list_key] = clicked[0]
    if list_key not in st.session_state or st.session_state[list_key] not in pickable:
        # base_cloud puts the centres of `preds` in their order; the target is one of them.
        st.session_state[list_key] = int(cloud.indices(CENTRE)[[p.index for p in preds].index(target)])
    if pickable:
        picked = st.selectbox("Similarity map of", pickable, key=list_key,
                              format_func={i: labels[i] for i in pickable}.__getitem__,
                              help="Or click a centre or prototype in the plot; pick the lasso or box tool "
                                   "above the plot to select pixels and locate them.")
    if sel_pixels:
        mask = np.zeros((h, w), bool)
        mask[cloud.rows[sel_pixels], cloud.cols[sel_pixels]] = True
        st.image(highlight(display, resize_nearest(mask, size)), width="stretch",
                 caption=f"{len(sel_pixels)} selected pixel(s) of the {h}×{w} feature grid")
    elif pickable:
        i = picked
        vec = cloud.vectors[i] if i < len(cloud) else protos.vectors[i - len(cloud)]
        feats = out.fwd.head_features if scale == 1.0 else out.fwd.features_at(scale)
        sim = similarity_map(vec, feats)
        st.image(render_tile(display, to_image_map(sim, size, "minmax"), 0.55, "jet", threshold or None),
                 width="stretch", caption=f"cosine similarity of every pixel to {labels[i]} "
                 f"(range {float(sim.min()):.2f} … {float(sim.max()):.2f})")
    else:
        st.image(display, width="stretch",
                 caption="Click pixels, or pick the lasso or box tool above the plot, to see where they are; "
                 "click a centre or a prototype to see its similarity map.")


def _cluster_rows(sel_) -> list[dict]:
    rows = []
    for name, km, prob, chosen in (("foreground", sel_.fg, sel_.fg_prob, sel_.fg_selected),
                                   ("context", sel_.bg, sel_.bg_prob, sel_.bg_selected)):
        if km is None:
            continue
        counts = torch.bincount(km.labels, minlength=len(prob)).tolist()
        rows += [{"set": name, "cluster": i, "pixels": counts[i], "p(class)": round(float(prob[i]), 4),
                  "prototype": bool(chosen[i])} for i in range(len(prob))]
    return rows


def _figure(coords, kinds, labels, cloud, values, palette, colour_by, image_size) -> go.Figure:
    """The scatter of every point; image_size (height, width) turns a pixel's grid cell into
    image coordinates for its hover text."""
    h, w = cloud.grid
    fig = go.Figure()
    for kind in [PIXEL, BANK_FG, BANK_BG, CENTRE, LP_CLASS, LP_CONTEXT, SIPE_PROTO]:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        xy = coords[idx]
        if kind == PIXEL:
            rr, cc = cloud.rows[idx], cloud.cols[idx]
            hover = [f"{labels[i]}<br>image x≈{(c + .5) * image_size[1] / w:.0f}, y≈{(r + .5) * image_size[0] / h:.0f}"
                     f"<br>{colour_by}: {v}" for i, r, c, v in zip(idx, rr, cc, values)]
            marker = dict(size=6, symbol="circle", line=dict(width=0))
            if palette is not None:
                for cat, colour in palette.items():
                    sub = [j for j, v in enumerate(values) if v == cat]
                    if not sub:
                        continue
                    fig.add_trace(go.Scatter(x=xy[sub, 0], y=xy[sub, 1], mode="markers", name=f"pixel: {cat}",
                                             marker={**marker, "color": colour}, customdata=[idx[j] for j in sub],
                                             hovertext=[hover[j] for j in sub], hoverinfo="text"))
                continue
            marker.update(color=values, colorscale="Jet", cmin=0, cmax=1, colorbar=dict(title=colour_by, len=0.6))
            fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name="pixel", marker=marker,
                                     customdata=idx, hovertext=hover, hoverinfo="text"))
        else:
            big = kind not in (BANK_FG, BANK_BG)
            fig.add_trace(go.Scatter(
                x=xy[:, 0], y=xy[:, 1], mode="markers", name=kind,
                marker=dict(size=15 if big else 5, symbol=MARKERS[kind], color=KIND_COLOURS[kind],
                            line=dict(width=1, color="black") if big else None),
                customdata=idx, hovertext=[labels[i] for i in idx], hoverinfo="text"))
    centres = [i for i, k in enumerate(kinds) if k == CENTRE]
    annotations, x_range, y_range = _centre_labels(coords, coords[centres],
                                                   [labels[i].removeprefix("centre: ") for i in centres])
    # No dragmode of select or lasso by default: Streamlit's chart then sets clickmode 'event' (a click
    # selects nothing, issue 9 item 2); with pan it sets 'event+select'. Lasso and box are in the modebar.
    fig.update_layout(height=PLOT_HEIGHT, margin=dict(l=10, r=10, t=40, b=10), dragmode="pan",
                      legend=dict(orientation="h", y=-0.08), annotations=annotations,
                      xaxis=dict(range=x_range), yaxis=dict(range=y_range))
    return fig


PLOT_HEIGHT = 560
# For placing the centres' labels: the plot area's smallest expected size (the plot column at a
# 1280 px window, less the legend and colour bar) and the size of a 12 px label. A wider plot
# only leaves more room between labels.
PLOT_AREA_PX = (430.0, 380.0)
LABEL_CHAR_PX, LABEL_LINE_PX, LABEL_DX_PX = 7.0, 17.0, 14.0


def _centre_labels(coords: np.ndarray, anchors: np.ndarray, texts: list[str]):
    """Annotations naming the class centres, stacked where they would overlap (near-synonym
    centres sit on one spot), and the axis ranges that hold every point and label (a label
    past the axis range is clipped)."""
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    area = np.array(PLOT_AREA_PX)
    widths = np.array([len(t) * LABEL_CHAR_PX for t in texts])
    pos = anchors
    for _ in range(2):  # the ranges grow to hold the labels, which shrinks the scale: place again
        scale = area / (hi - lo)  # px per data unit
        pos = spread_labels((anchors - lo) * scale, widths, LABEL_LINE_PX, LABEL_DX_PX) / scale + lo
        if len(texts):
            hi = np.maximum(hi, [pos[:, 0].max(), pos[:, 1].max()] + np.array([widths.max(), LABEL_LINE_PX]) / scale)
            lo = np.minimum(lo, pos.min(axis=0) - np.array([0.0, LABEL_LINE_PX]) / scale)
    annotations = [dict(x=float(a[0]), y=float(a[1]), ax=float(p[0]), ay=float(p[1]), axref="x", ayref="y",
                        text=t, xanchor="left", yanchor="middle", showarrow=True, arrowhead=0, arrowwidth=1,
                        arrowcolor="#555", font=dict(size=12), bgcolor="rgba(255,255,255,0.75)")
                   for a, p, t in zip(anchors, pos, texts)]
    return annotations, [float(lo[0]), float(hi[0])], [float(lo[1]), float(hi[1])]


def _selected_indices(event) -> list[int]:
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return []
    out = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, list):
            cd = cd[0] if cd else None
        if cd is not None:
            out.append(int(cd))
    return out


def _seed_names(bb, sp) -> list[str]:
    """SIPE's seed labels by name: 0 = background, then the image's classes."""
    return ["background"] + [bb.short_name(c) for c in sp.extras["labels"][1:]]


def _seed_colours(n: int) -> list[str]:
    """The seed overlay's colours (render.label_overlay) as hex; the background, left untinted
    there, grey."""
    return ["#9e9e9e"] + [hex_colour(LABEL_COLOURS[min(j, len(LABEL_COLOURS) - 1)]) for j in range(1, n)]


def _pixel_colours(sel: Selection, colour_by: str, cloud: PointCloud, lp, sp, target: int):
    """One value per pixel point, and the palette: map values in [0, 1] (palette None), or
    category names with the palette {category: colour} in legend order. Maps at the sidebar's
    input size."""
    bb = sel.backbone
    grid = cloud.grid
    idx = cloud.indices(PIXEL)
    rr, cc = cloud.rows[idx], cloud.cols[idx]
    if colour_by == "SIPE seed" and sp is not None:
        seeds = resize_nearest(sp.extras["seeds"].cpu().numpy(), grid)
        names = _seed_names(bb, sp)
        return [names[int(s)] for s in seeds[rr, cc]], dict(zip(names, _seed_colours(len(names))))
    if colour_by == KMEANS and lp is not None:
        sel_ = lp.extras["selection"]
        n_bg = len(sel_.bg_prob) if sel_.bg is not None else 0
        fg_colours, bg_colours = group_colours(len(sel_.fg_prob), n_bg)
        palette = {("class" if sel_.fg_selected[i] else "fg") + f" {i}": fg_colours[i] for i in range(len(fg_colours))}
        vecs = [sel_.fg.centers]
        if n_bg:
            palette.update({("context" if sel_.bg_selected[i] else "bg") + f" {i}": bg_colours[i]
                            for i in range(n_bg)})
            vecs.append(sel_.bg.centers)
        names = list(palette)
        c = torch.nn.functional.normalize(torch.cat(vecs).float().cpu(), dim=1)
        nearest = (cloud.vectors[idx] @ c.T).argmax(dim=1).tolist()
        return [names[j] for j in nearest], palette
    source = {"CAM": "cam", "LPCAM": "lpcam", "Grad-CAM": "gradcam", "SIPE IS-CAM": "sipe"}.get(colour_by, "cam")
    res = {"lpcam": lp, "sipe": sp}.get(source) or sel.explainer.compute(sel.image, source, target,
                                                                          input_size=sel.input_size)
    m = to_image_map(res.map, grid, "max")
    return [round(float(v), 3) for v in m[rr, cc]], None


def main() -> None:
    st.session_state["fs_page_runs"] = st.session_state.get("fs_page_runs", 0) + 1
    sel = page_selection()
    ex, image, bb = sel.explainer, sel.image, sel.backbone
    st.title("Feature space")
    st.caption("Where the class centre (the classifier's row) sits among the pixel features, and how "
               "LPCAM's prototypes and SIPE's seeds cover the rest of the object.")
    with st.expander("How to read this page", expanded=False):
        st.markdown(HOW_TO_READ)
    if (reason := get_method("lpcam").refusal(bb)) is not None:  # no class centres to place (issue 13)
        st.info(f"{reason}. This page places pixel features around the classifier's class centres; the Compare "
                "page offers the methods that apply to this backbone.")
        st.stop()
    preds = ex.predict(image, 5, input_size=sel.input_size)
    drop_stale_choice("fs_target", [p.index for p in preds])
    # format_funcs: a dict's __getitem__, not lambdas of this script (see pages/compare.py: Streamlit keeps every
    # widget's format_func, and a lambda here would keep this run's image and forward pass alive).
    target = st.selectbox("Class", [p.index for p in preds], key="fs_target",
                          format_func={p.index: f"{bb.short_name(p.index)} ({p.index}) · {p.probability:.1%}"
                                       for p in preds}.__getitem__)
    bank = bank_panel(ex, target)
    if bank is DATASET:
        bank = dataset_bank(ex)
        if bank is not None:
            st.caption(f"LPCAM's bank: {bank.describe(bb.short_name)}")
    st.session_state["lpcam_bank"] = bank  # the Compare page's LPCAM uses it too
    tuning(sel, preds, target, bank, page_working())


main()
