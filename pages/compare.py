"""Compare page: one tile per method (and per class), shared display controls.

Functions with explicit arguments: controls (widgets in), compute (cam_core calls), render
(tiles out). The page starts from the sidebar selection that app.py drew in this run.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from cam_core import Cancelled, LayerError, search_classes
from cam_core.render import (
    COLORMAPS,
    NORMALISATIONS,
    colorize,
    downscale_for_display,
    render_tile,
    to_image_map,
    with_colorbar,
)
from pages import scores
from ui.common import (
    USER_ERRORS,
    Selection,
    drop_stale_choice,
    explain_class,
    grid_png,
    layer_help,
    page_selection,
    param_input,
    shown_width,
    stop_all_requested,
    tile_npy,
    tile_png,
    warm_up_once,
)

HOW_TO_READ = """
**A class activation map (CAM)** shows, for one class, how much each part of the image pushed
the model's score for that class: hot colours where the evidence is. Each tile is one method's
answer for the same image, layer and class; the colour bar under it says what its ends mean.

**CAM** (Zhou et al. 2016) weighs the last feature maps by the classifier's weights for the
class: map = Σₖ wₖᶜ Aₖ. It needs a head that is global average pooling (GAP) + one linear layer.

**Why CAM, Grad-CAM and XGrad-CAM coincide** at the last layer of such a head: the gradient of
the score is ∂yᶜ/∂Aₖ = wₖᶜ / (h·w) at every pixel, so Grad-CAM's channel weight (its mean) and
XGrad-CAM's (its activation-weighted mean) are both wₖᶜ / (h·w), CAM's weight up to a positive
scale. After normalisation the three tiles are the same map (Grad-CAM's ReLU aside). Pick an
earlier layer and they part ways.

**Class-agnostic maps** (Eigen-CAM, rollout) are the same for every class: shown once.

**Prototypes** (LPCAM, SIPE): instead of the one classifier row per class, the features of
pixels the class clearly covers are clustered (K-means) into several local prototypes (a
cat's ear, fur, eye); the map is each pixel's cosine similarity to them, minus that to context
prototypes (background that comes with the class). LPCAM from this image's own pixels is
marked approximate: the paper clusters a whole training set. The Feature space page shows them.

**Approximate** on a tile: the method departs from its paper here (a note on hover says how).
"""

DEFAULT_METHODS = ["cam", "gradcam", "gradcampp", "layercam", "eigencam"]
NORM_HELP = "minmax: (m - min)/(max - min), as Grad-CAM libraries and TS-CAM. max: m/max, as LPCAM and SIPE."

# Widget callbacks and format_funcs are bound methods or functions of ui.common, never
# functions or lambdas of this script: Streamlit keeps the metadata (callback, format_func) of
# every widget a session ever drew, and a function of a page script holds that run's globals -
# its image, forward pass, maps and tiles - for as long as the session lives.


@dataclass(frozen=True)
class Display:
    """The display controls: applied at render time, never recompute a map."""

    cmap: str
    opacity: float
    norm: str
    threshold: float
    per_row: int
    show_raw: bool


@dataclass
class Grid:
    """What the tiles are drawn from, and what they collect for the grid PNG."""

    sel: Selection
    specs: dict
    display: Display
    display_rgb: object
    results: dict
    errors: dict
    sheet_tiles: dict  # (class, method) -> (caption, tile without its colour bar)
    gts: dict  # class -> the image's ground truth for it (scores.ground_truth)


def slow_label(label: str) -> str:
    """A slow method's label: 'Score-CAM (top-N channels, slow)', not '... (top-N channels) (slow)'."""
    return f"{label[:-1]}, slow)" if label.endswith(")") else f"{label} (slow)"


# Widgets get their defaults here, never as a value argument: the sidebar re-assigns the page
# keys on every run (to keep them across pages), and a widget given both a value and a state
# makes Streamlit log "created with a default value but also had its value set via the Session
# State API".
DEFAULTS = {"topk": 1, "opacity": 0.5, "threshold": 0.0, "per_row": 5}


# ----- controls ---------------------------------------------------------------------------
def target_controls(sel: Selection, preds, column) -> list[int]:
    """Top-5 buttons, a class search and the top-k count: the classes to explain."""
    bb, image = sel.backbone, sel.image
    target_key = (image.sha256, bb.name)
    if st.session_state.get("target_for") != target_key:
        st.session_state["target_for"] = target_key
        st.session_state["target"] = preds[0].index
    with column:
        st.markdown(f"**Top-5 of {bb.name}** — click one to explain it")
        buttons = st.container(horizontal=True)
        for p in preds:
            buttons.button(
                f"{bb.short_name(p.index)} · {p.probability:.1%}",
                key=f"pred_{p.index}",
                on_click=explain_class,
                args=(p.index,),
                type="primary" if p.index == st.session_state["target"] else "secondary",
                help=f"class {p.index}: {p.name}",
            )
        truth_note(sel, preds[0])
        c1, c2 = st.columns([3, 2])
        query = c1.text_input("Search a class by name", key="class_query", placeholder="e.g. tabby, 281")
        if query:
            found = [int(query)] if query.strip().isdigit() else search_classes(query, bb.class_names)
            found = [i for i in found if 0 <= i < bb.num_classes]
            if query.strip().isdigit() and not found:
                c1.warning(f"{bb.name} has class ids 0 to {bb.num_classes - 1}; {query.strip()} is not one.")
            elif found:
                names = {i: f"{i}: {bb.class_name(i)}" for i in found}
                pick = c1.selectbox("Matches", found, format_func=names.__getitem__, key="class_pick")
                c1.button("Explain this class", on_click=explain_class, args=(pick,), key="use_pick")
            else:
                c1.warning(f"No class name matches '{query}'.")
        side_by_side = c2.number_input("Classes side by side (top-k)", 1, 5, key="topk",
                                       help="More than 1: one row per class, the top-k predictions.")
    if side_by_side > 1:
        return [p.index for p in preds[: int(side_by_side)]]
    return [st.session_state["target"]]


def truth_note(sel: Selection, top1) -> None:
    """What the sample photo shows, next to the top-5; a warning when the top-1 disagrees
    (ImageNet heads only: the recorded classes are ImageNet's)."""
    truth, bb = sel.truth, sel.backbone
    if truth is None or bb.num_classes != 1000:
        return
    if truth.agrees(top1.index):
        st.caption(f"The photo shows {truth.shows}.")
    else:
        st.warning(f"{bb.name} says **{bb.short_name(top1.index)}**; the photo shows {truth.shows}. "
                   "Explain the top-1 to see what it looked at.", icon=":material/help:")


def method_controls(sel: Selection) -> tuple[dict, list[str], str, dict[str, dict]]:
    """(specs, chosen methods, layer, parameters per method)."""
    specs = {s.name: s for s in sel.explainer.methods()}  # only the methods that apply to this backbone
    drop_stale_choice("methods", specs)
    # The defaults, plus the fast methods made for this kind of backbone alone (TS-CAM and
    # attention rollout on a ViT), which a user would otherwise not know to look for.
    own = [n for n, s in specs.items() if s.kinds == (sel.backbone.kind,) and not s.slow]
    defaults = [m for m in DEFAULT_METHODS if m in specs] + own
    previous = st.session_state.get("methods_defaults")
    if previous != defaults:  # a backbone of another kind: its defaults, unless the user chose others
        # (drop_stale_choice has already removed what this backbone does not offer)
        if st.session_state.get("methods") in (None, [m for m in previous or [] if m in specs]):
            st.session_state["methods"] = defaults
        st.session_state["methods_defaults"] = defaults
    chosen = st.multiselect(
        "Methods", list(specs), key="methods",
        format_func={n: slow_label(s.label) if s.slow else s.label for n, s in specs.items()}.__getitem__,
    )
    with st.expander("Layer and method parameters"):
        layers = sel.backbone.layer_choices()
        layer = st.selectbox("Feature layer", layers, key=f"layer_{sel.backbone.name}",
                             help=layer_help(specs.values()))
        params: dict[str, dict] = {}
        for name in chosen:
            for p in specs[name].params:
                params.setdefault(name, {})[p.name] = param_input(p, f"{specs[name].label}: {p.name}",
                                                                  key=f"param_{name}_{p.name}")
        for name in chosen:
            st.caption(f"**{specs[name].label}** — {specs[name].description} ({specs[name].reference})")
    return specs, chosen, layer, params


def display_controls() -> Display:
    d1, d2, d3, d4, d5 = st.columns(5)
    cmap = d1.selectbox("Colormap", COLORMAPS, key="cmap")
    opacity = d2.slider("Opacity", 0.0, 1.0, step=0.05, key="opacity")
    norm = d3.radio("Normalisation", NORMALISATIONS, horizontal=True, key="norm", help=NORM_HELP)
    threshold = d4.slider("Threshold (0 = off)", 0.0, 1.0, step=0.05, key="threshold",
                          help="Draws the contour of the region at or above it, and the box of its largest part.")
    per_row = d5.slider("Tiles per row", 1, 6, key="per_row")
    show_raw = st.toggle("Show the raw maps too", key="show_raw")
    return Display(cmap, opacity, norm, threshold, per_row, show_raw)


# ----- compute ----------------------------------------------------------------------------
def compute_fast(sel: Selection, specs: dict, targets: list[int], chosen: list[str], layer: str,
                 params: dict, bank) -> tuple[dict, dict]:
    """Every fast map, BEFORE any image is sent: on a 2-core machine the server thread and
    the browser, busy with freshly sent images, slowed the forward pass ~10x (measured)."""
    results, errors = {}, {}
    for t in targets:
        for m in chosen:
            if specs[m].slow:
                continue
            try:
                results[(t, m)] = sel.explainer.compute(sel.image, m, t, layer, params.get(m), bank=bank,
                                                        input_size=sel.input_size)
            except USER_ERRORS as exc:
                errors[(t, m)] = str(exc)
    return results, errors


def run_slow(grid: Grid, cell, m: str, t: int, layer: str, params: dict, bank) -> None:
    """A slow method's tile: its progress and a Stop button in place; once stopped, a
    "Run it" button, until clicked."""
    sel, label = grid.sel, grid.specs[m].label
    key = (sel.image.sha256, sel.backbone.name, sel.input_size, layer, m, t)
    stopped = st.session_state.setdefault("stopped_slow", set())
    if stop_all_requested():
        stopped.add(key)
    if key not in stopped:
        with cell:
            bar, stop = st.empty(), st.empty()
        if not stop.button(f"Stop {label}", key=f"stop_{m}_{t}"):
            def progress(done: int, total: int) -> None:
                bar.progress(done / total, text=f"{done}/{total} channels scored")

            try:
                grid.results[(t, m)] = sel.explainer.compute(sel.image, m, t, layer, params.get(m),
                                                             progress=progress, bank=bank, input_size=sel.input_size)
            except (*USER_ERRORS, Cancelled) as exc:
                grid.errors[(t, m)] = str(exc)
            bar.empty()
            stop.empty()
            fill_tile(grid, cell, m, t)
            return
        # The click itself interrupted the run in progress; remember not to restart it.
        stopped.add(key)
        stop.empty()
    with cell:
        st.warning("Stopped.")
        st.button("Run it", key=f"resume_{m}_{t}", on_click=stopped.discard, args=(key,))


# ----- render -----------------------------------------------------------------------------
def fill_tile(grid: Grid, cell, m: str, t: int) -> None:
    res, err = grid.results.get((t, m)), grid.errors.get((t, m))
    display, image = grid.display, grid.sel.image
    with cell:
        if res is None:
            st.error(err or "not computed")
            return
        m01 = to_image_map(res.map, grid.display_rgb.shape[:2], display.norm)
        tile = scores.outlined(render_tile(grid.display_rgb, m01, display.opacity, display.cmap, display.threshold),
                               grid.gts.get(t))
        shown = with_colorbar(tile, display.cmap, display.norm)
        st.image(shown, width=shown_width(shown))
        if display.show_raw:
            st.image(colorize(m01, display.cmap), width=shown_width(m01), caption="raw map")
        flags = " · approximate" if res.approximate else ""
        grid_hw = f"grid {res.grid[0]} × {res.grid[1]}"
        st.caption(f"{res.target_name} · {res.ms:.1f} ms · {grid_hw}{flags}",
                   help=f"{res.note + ' · ' if res.note else ''}map {res.map.shape[0]} × {res.map.shape[1]} from "
                        f"features {res.grid[0]} × {res.grid[1]}, input {res.input_size[0]} × {res.input_size[1]}")
        scores.score_line(grid.sel.explainer, image, res, grid.gts.get(t), res.layer)
        grid.sheet_tiles[(t, m)] = (f"{grid.specs[m].label} | {res.target_name}", tile)
        b1, b2 = st.columns(2)
        stem = f"{image.stem}_{m}_{t}"
        # Files at the image's own size are made only when clicked (deferred callables).
        b1.download_button("PNG", tile_png(image, res.map, display.norm, display.opacity, display.cmap,
                                           display.threshold),
                           file_name=f"{stem}.png", mime="image/png", key=f"png_{m}_{t}", on_click="ignore")
        b2.download_button("NPY", tile_npy(image, res.map, display.norm), file_name=f"{stem}.npy",
                           mime="application/octet-stream", key=f"npy_{m}_{t}", on_click="ignore")


def grid_cells(grid: Grid, targets: list[int], chosen: list[str]) -> dict:
    """One cell per (class, method), titled, one column per method in the same place in
    every class's row. A class-agnostic map (Eigen-CAM) is the same for every class: drawn
    in the first row only, its place in the other rows marked."""
    bb, per_row = grid.sel.backbone, grid.display.per_row
    cells = {}
    for row, t in enumerate(targets):
        if len(targets) > 1:
            st.subheader(f"{bb.short_name(t)} (class {t})")
        for row_start in range(0, len(chosen), per_row):
            for col, m in zip(st.columns(per_row), chosen[row_start : row_start + per_row]):
                col.markdown(f"**{grid.specs[m].label}**")
                if row > 0 and not grid.specs[m].class_specific:
                    col.caption("class-agnostic: the same map for every class, drawn in the first row")
                    continue
                cells[(t, m)] = col.container()
    return cells


def main(sel: Selection) -> None:
    ex, image, bb = sel.explainer, sel.image, sel.backbone
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    title, help_button = st.columns([5, 1], vertical_alignment="bottom")
    title.title("Compare CAM methods")
    with help_button.popover("How to read this page", icon=":material/help:"):
        st.markdown(HOW_TO_READ)
    try:
        preds = ex.predict(image, 5, input_size=sel.input_size)
    except (LayerError, RuntimeError) as exc:
        st.error(f"{bb.name} cannot run on this image: {exc}")
        return

    display_rgb, _ = downscale_for_display(image.rgb, 640)
    left, right = st.columns([1, 2])
    targets = target_controls(sel, preds, right)
    gts = scores.ground_truth(image, bb, targets)
    specs, chosen, layer, params = method_controls(sel)
    display = display_controls()
    if not chosen:
        st.info("Choose one or more methods above.")
        return

    bank = st.session_state.get("lpcam_bank")  # chosen on the Feature space page
    if bank is not None and bank.backbone != bb.name:
        bank = None

    results, errors = compute_fast(sel, specs, targets, chosen, layer, params, bank)
    fwd = ex.forward(image, layer, sel.input_size)
    fed = tuple(fwd.input.shape[-2:])
    left.image(scores.outlined(display_rgb, gts.get(targets[0])), width=shown_width(display_rgb),
               caption=f"{image.name} ({image.size[1]}×{image.size[0]}) → {fed[1]}×{fed[0]}")
    timing = st.empty()
    grid = Grid(sel, specs, display, display_rgb, results, errors, {}, gts)

    # Fast tiles now, slow ones with progress in place.
    cells = grid_cells(grid, targets, chosen)
    for (t, m), cell in cells.items():
        if not specs[m].slow:
            fill_tile(grid, cell, m, t)
    for (t, m), cell in cells.items():
        if specs[m].slow:
            run_slow(grid, cell, m, t, layer, params, bank)

    timing.caption(
        f"Shared by all methods: forward pass {fwd.forward_ms:.0f} ms"
        + "".join(f" · gradient for class {c} {ms:.1f} ms" for c, ms in fwd.gradient_ms.items() if c in targets)
        + f" · device {sel.device} · layer `{layer}` · input {fed[0]} × {fed[1]}"
    )
    if grid.sheet_tiles:
        # In the on-screen order (slow methods are computed last, not placed last).
        tiles = [grid.sheet_tiles[cell] for cell in cells if cell in grid.sheet_tiles]
        classes = ", ".join(f"{bb.short_name(t)} ({t})" for t in targets)
        settings = (f"{image.name} · {bb.name} · input {fed[0]} x {fed[1]} · layer {layer} · class {classes} · "
                    f"{display.norm} normalisation · {display.cmap}")
        st.download_button(
            "Download the whole grid (PNG)",
            grid_png([("image", display_rgb), *tiles], display.per_row + 1, settings, display.cmap, display.norm),
            file_name=f"{image.stem}_grid.png", mime="image/png", key="grid_png", on_click="ignore")
    scores.faithfulness(ex, image, results, specs, layer, cancel=stop_all_requested)
    scores.agreement_matrix(results, targets, bb, display_rgb.shape[:2], display.norm, display.threshold, specs)
    warm_up_once(ex, [m for m in chosen if any(k[1] == m for k in grid.results)])


main(page_selection())
