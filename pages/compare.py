"""Compare page: one tile per method (and per class), shared display controls."""

from __future__ import annotations

import streamlit as st

from cam_core import Cancelled, LayerError, search_classes
from cam_core.render import (
    COLORMAPS,
    NORMALISATIONS,
    colorize,
    downscale_for_display,
    render_tile,
    to_image_map,
)
from pages import scores
from pages.common import USER_ERRORS, drop_stale_choice, grid_png, param_input, sidebar, tile_npy, tile_png

DEFAULT_METHODS = ["cam", "gradcam", "gradcampp", "layercam", "eigencam"]
NORM_HELP = "minmax: (m - min)/(max - min), as Grad-CAM libraries and TS-CAM. max: m/max, as LPCAM and SIPE."

sel = sidebar()
ex, image, bb = sel.explainer, sel.image, sel.backbone
st.title("Compare CAM methods")

try:
    preds = ex.predict(image, 5)
except (LayerError, RuntimeError) as exc:
    st.error(f"{bb.name} cannot run on this image: {exc}")
    st.stop()

# ----- target: top-1, a clicked prediction, a searched class, or the top-k -----------------
target_key = (image.sha256, bb.name)
if st.session_state.get("target_for") != target_key:
    st.session_state["target_for"] = target_key
    st.session_state["target"] = preds[0].index

# Widget callbacks and format_funcs are bound methods, never functions or lambdas of this
# script: Streamlit keeps the metadata (callback, format_func) of every widget a session ever
# drew, and a function of a page script holds that run's globals - its image, forward pass,
# maps and tiles - for as long as the session lives.
_set_target = st.session_state.__setitem__

display_rgb, _ = downscale_for_display(image.rgb, 640)
left, right = st.columns([1, 2])
with right:
    st.markdown(f"**Top-5 of {bb.name}** — click one to explain it")
    buttons = st.container(horizontal=True)
    for p in preds:
        buttons.button(
            f"{bb.short_name(p.index)} · {p.probability:.1%}",
            key=f"pred_{p.index}",
            on_click=_set_target,
            args=("target", p.index),
            type="primary" if p.index == st.session_state["target"] else "secondary",
            help=f"class {p.index}: {p.name}",
        )
    c1, c2 = st.columns([3, 2])
    query = c1.text_input("Search a class by name", key="class_query", placeholder="e.g. tabby, 281")
    if query:
        found = [int(query)] if query.strip().isdigit() else search_classes(query, bb.class_names)
        found = [i for i in found if 0 <= i < bb.num_classes]
        if found:
            names = {i: f"{i}: {bb.class_name(i)}" for i in found}
            pick = c1.selectbox("Matches", found, format_func=names.__getitem__, key="class_pick")
            c1.button("Explain this class", on_click=_set_target, args=("target", pick), key="use_pick")
        else:
            c1.warning(f"No class name matches '{query}'.")
    side_by_side = c2.number_input("Classes side by side (top-k)", 1, 5, 1, key="topk",
                                   help="More than 1: one row per class, the top-k predictions.")

targets = [p.index for p in preds[: int(side_by_side)]] if side_by_side > 1 else [st.session_state["target"]]
gts = scores.ground_truth(image, bb, targets)

# ----- methods, layer, parameters ------------------------------------------------------------
specs = {s.name: s for s in ex.methods()}
drop_stale_choice("methods", specs)
chosen = st.multiselect(
    "Methods", list(specs), default=[m for m in DEFAULT_METHODS if m in specs], key="methods",
    format_func={n: s.label + (" (slow)" if s.slow else "") for n, s in specs.items()}.__getitem__,
)
with st.expander("Layer and method parameters"):
    layers = bb.layer_choices()
    layer = st.selectbox("Feature layer", layers, key=f"layer_{bb.name}",
                         help="CAM always uses the features the classifier pools; the other methods use this layer.")
    params: dict[str, dict] = {}
    for name in chosen:
        for p in specs[name].params:
            params.setdefault(name, {})[p.name] = param_input(p, f"{specs[name].label}: {p.name}",
                                                              key=f"param_{name}_{p.name}")
    for name in chosen:
        st.caption(f"**{specs[name].label}** — {specs[name].description} ({specs[name].reference})")

# ----- display controls: applied at render time, never recompute a map ------------------------
d1, d2, d3, d4, d5 = st.columns(5)
cmap = d1.selectbox("Colormap", COLORMAPS, key="cmap")
opacity = d2.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
norm = d3.radio("Normalisation", NORMALISATIONS, horizontal=True, key="norm", help=NORM_HELP)
threshold = d4.slider("Threshold (0 = off)", 0.0, 1.0, 0.0, 0.05, key="threshold",
                      help="Draws the contour of the region at or above it, and the box of its largest part.")
per_row = d5.slider("Tiles per row", 1, 6, 5, key="per_row")
show_raw = st.toggle("Show the raw maps too", value=False, key="show_raw")

if not chosen:
    st.info("Choose one or more methods above.")
    st.stop()

bank = st.session_state.get("lpcam_bank")  # chosen on the Feature space page
if bank is not None and bank.backbone != bb.name:
    bank = None

# ----- compute every fast map BEFORE sending any image: on a 2-core machine the server thread
# and the browser, busy with freshly sent images, slowed the forward pass ~10x (measured).
results: dict[tuple[int, str], object] = {}
errors: dict[tuple[int, str], str] = {}
for t in targets:
    for m in chosen:
        if specs[m].slow:
            continue
        try:
            results[(t, m)] = ex.compute(image, m, t, layer, params.get(m), bank=bank)
        except USER_ERRORS as exc:
            errors[(t, m)] = str(exc)

left.image(scores.outlined(display_rgb, gts.get(targets[0])), caption=f"{image.name} ({image.size[1]}×{image.size[0]}) → {bb.input_size[1]}×{bb.input_size[0]}")
fwd = ex.forward(image, layer)
timing = st.empty()
sheet_tiles: list[tuple[str, object]] = []


def fill_tile(cell, m: str, t: int) -> None:
    res, err = results.get((t, m)), errors.get((t, m))
    with cell:
        if res is None:
            st.error(err or "not computed")
            return
        m01 = to_image_map(res.map, display_rgb.shape[:2], norm)
        tile = scores.outlined(render_tile(display_rgb, m01, opacity, cmap, threshold), gts.get(t))
        st.image(tile, width="stretch")
        if show_raw:
            st.image(colorize(m01, cmap), width="stretch", caption="raw map")
        flags = " · approximate" if res.approximate else ""
        st.caption(f"{res.target_name} · {res.ms:.1f} ms · {tuple(res.map.shape)}{flags}",
                   help=res.note or None)
        scores.score_line(ex, image, res, gts.get(t), layer)
        sheet_tiles.append((f"{specs[m].label} | {res.target_name}", tile))
        b1, b2 = st.columns(2)
        stem = f"{image.stem}_{m}_{t}"
        # Files at the image's own size are made only when clicked (deferred callables).
        b1.download_button("PNG", tile_png(image, res.map, norm, opacity, cmap, threshold),
                           file_name=f"{stem}.png", mime="image/png", key=f"png_{m}_{t}", on_click="ignore")
        b2.download_button("NPY", tile_npy(image, res.map, norm), file_name=f"{stem}.npy",
                           mime="application/octet-stream", key=f"npy_{m}_{t}", on_click="ignore")


# ----- the grid: one cell per (class, method); fast tiles now, slow ones with progress in place
cells = {}
for row, t in enumerate(targets):
    if len(targets) > 1:
        st.subheader(f"{bb.short_name(t)} (class {t})")
    # A class-agnostic map (Eigen-CAM) is the same for every class: shown in the first row only.
    shown = [m for m in chosen if row == 0 or specs[m].class_specific]
    for row_start in range(0, len(shown), per_row):
        for col, m in zip(st.columns(per_row), shown[row_start : row_start + per_row]):
            cells[(t, m)] = col.container()
            cells[(t, m)].markdown(f"**{specs[m].label}**")
for (t, m), cell in cells.items():
    if not specs[m].slow:
        fill_tile(cell, m, t)

stopped = st.session_state.setdefault("stopped_slow", set())
for (t, m), cell in cells.items():
    if not specs[m].slow:
        continue
    key = (image.sha256, bb.name, layer, m, t)
    if key in stopped:
        with cell:
            st.warning("Stopped.")
            st.button("Run it", key=f"resume_{m}_{t}", on_click=stopped.discard, args=(key,))
        continue
    with cell:
        bar, stop = st.empty(), st.empty()
    if stop.button(f"Stop {specs[m].label}", key=f"stop_{m}_{t}"):
        # The click itself interrupted the run in progress; remember not to restart it.
        stopped.add(key)
        stop.empty()
        with cell:
            st.warning("Stopped.")
            st.button("Run it", key=f"resume_{m}_{t}", on_click=stopped.discard, args=(key,))
        continue

    def progress(done: int, total: int, m=m, bar=bar) -> None:
        bar.progress(done / total, text=f"{done}/{total} channels scored")

    try:
        results[(t, m)] = ex.compute(image, m, t, layer, params.get(m), progress=progress, bank=bank)
    except (*USER_ERRORS, Cancelled) as exc:
        errors[(t, m)] = str(exc)
    bar.empty()
    stop.empty()
    fill_tile(cell, m, t)

timing.caption(
    f"Shared by all methods: forward pass {fwd.forward_ms:.0f} ms"
    + "".join(f" · gradient for class {c} {ms:.1f} ms" for c, ms in fwd.gradient_ms.items() if c in targets)
    + f" · device {sel.device} · layer `{layer}`"
)
if sheet_tiles:
    st.download_button(
        "Download the whole grid (PNG)",
        grid_png([("image", display_rgb), *sheet_tiles], per_row + 1),
        file_name=f"{image.stem}_grid.png", mime="image/png", key="grid_png", on_click="ignore")
scores.faithfulness(ex, image, results, specs, layer)
scores.agreement_matrix(results, targets[0], display_rgb.shape[:2], norm, threshold, specs)
