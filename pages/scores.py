"""The Compare page's scores: the ground truth (found next to the image, uploaded or typed)
outlined on the image and the tiles, a score line under each tile, the faithfulness curves of
the shown tiles, and the method-by-method agreement. Streamlit-side only; every number is a
cam_core call (cam_core.groundtruth, cam_core.metrics)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cam_core.groundtruth import (
    GroundTruth,
    GroundTruthError,
    find_ground_truth,
    ground_truth_scores,
    outline,
    parse_box,
    read_mask,
)
from cam_core.errors import Cancelled
from cam_core.metrics import agreement, confidence_change, deletion, insertion
from cam_core.render import to_image_map

GT_COLOUR = (0, 255, 0)
FAITH_KEEP = 64  # faithfulness curves kept per session (each ~2 x 225 floats)


def _image_path() -> Path | None:
    """The file the sidebar's image came from (a sample or a typed path), None for an upload."""
    key = st.session_state.get("last_image_key")
    return Path(key[1]) if key and key[0] == "path" else None


def _digest(gt: GroundTruth) -> str:
    h = hashlib.sha256(repr((gt.size, gt.boxes)).encode())
    if gt.mask is not None:
        h.update(np.packbits(gt.mask).tobytes())
    return h.hexdigest()[:16]


def ground_truth(image, backbone, targets: list[int]) -> dict[int, GroundTruth]:
    """The ground truth of each target class: an uploaded mask, else a typed box, else what
    comes with the image file (cam_core.groundtruth.find_ground_truth; per class in a VOC
    folder). A mask or box that does not fit is a message; the one found stays in use."""
    out: dict[int, GroundTruth] = {}
    with st.expander("Ground truth (mask or box): scores and outlines"):
        c1, c2 = st.columns(2)
        up = c1.file_uploader("Upload a mask (non-zero pixels = the object, the image's size)", key="gt_mask",
                              type=["png", "bmp", "gif", "tif", "tiff", "jpg", "jpeg", "webp"])
        typed = c2.text_input("…or type a box X0,Y0,X1,Y1 (image pixels, inclusive)", key="gt_box",
                              placeholder="e.g. 148,50,550,642")
        given = None
        try:
            if up is not None:
                given = GroundTruth(image.size, mask=read_mask(up.getvalue(), image.size, what=up.name), source=up.name)
            elif typed:
                given = GroundTruth(image.size, boxes=(parse_box(typed, image.size),), source="the typed box")
        except GroundTruthError as exc:
            st.error(str(exc))
        path = _image_path()
        for t in targets:
            if given is not None:
                out[t] = given
                continue
            try:
                found = find_ground_truth(path, image.size, backbone.class_name(t)) if path is not None else None
            except GroundTruthError as exc:
                st.error(str(exc))
                found = None
            if found is not None:
                out[t] = found
        shown = out.get(targets[0]) if targets else None
        st.caption(f"Outlined in green: {shown.describe()}" if shown is not None else
                   "No mask or box comes with this image (a STEM_mask.png or STEM_annotations.json beside it, "
                   "or in masks/): upload one or type a box.")
    return out


def outlined(rgb: np.ndarray, gt: GroundTruth | None) -> np.ndarray:
    """The image or tile with the ground truth's outline, or as it is when there is none."""
    return rgb if gt is None else outline(rgb, gt, GT_COLOUR)


def score_line(ex, image, res, gt: GroundTruth | None, layer: str) -> None:
    """One caption under a tile: with a ground truth, energy inside it, pointing game and the
    best IoU (at the image's resolution, as the CLI); always, the cheap faithfulness numbers:
    the drop in the class's probability when the input is multiplied by the map (one forward,
    Average Drop's term) and whether it rose (Increase in Confidence's). At the tile's own
    input size: the forward pass its map came from."""
    fwd = ex.forward(image, layer, res.input_size)
    target = int(fwd.probs.argmax()) if res.target is None else res.target  # class-agnostic: for the top-1
    parts = []
    if gt is not None:
        s = fwd.memo(("gt_scores", res.method, target, res.params, _digest(gt)),
                     lambda: ground_truth_scores(to_image_map(res.map, image.size, "minmax"), gt.region))
        parts.append(f"energy {s['energy']:.2f} · pointing {'✓' if s['pointing'] else '✗'} · "
                     f"best IoU {s['best_iou']:.2f} (t {s['best_iou_threshold']:.2f})")
    cc = fwd.memo(("confidence", res.method, target, res.params),
                  lambda: confidence_change(fwd.backbone.model, fwd.input, res.map, target))
    parts.append(f"drop {cc.drop:.1%}{' · increase' if cc.increase else ''}")
    st.caption(" · ".join(parts), help="energy: share of the map inside the ground truth; pointing: its maximum "
               "within 15 px of it; best IoU of map ≥ t over t. drop: max(0, p − p(x·map)) / p for the class "
               "(Average Drop's term); increase: p(x·map) > p.")


def _curve_key(image, ex, layer, t, res) -> tuple:
    return (image.sha256, ex.backbone.name, layer, res.input_size, res.method, t, res.params)


FAITH_STOPPED = ("Stopped: the curves of {what} were not finished and are not shown; Score faithfulness scores "
                 "the tiles still missing.")


def faithfulness(ex, image, results: dict, specs: dict, layer: str, cancel=None) -> None:
    """"Score faithfulness": RISE's deletion and insertion games (cam_core.metrics) of every
    shown tile, with progress and stop, and one plot of all their curves. A tile's two curves
    are kept only when both games finished: its Stop (a click interrupts the run) or cancel()
    (the sidebar's Stop; asked before each batch of forwards) leaves no partial curve."""
    labels = {n: s.label for n, s in specs.items()}
    first = next(iter(results), (None, None))[0]
    # the shown tiles: a class-agnostic map (Eigen-CAM) once, as the grid shows it
    results = {k: r for k, r in results.items() if r.target is not None or k[0] == first}
    st.subheader("Faithfulness")
    store = st.session_state.setdefault("faith_curves", {})
    keys = {k: _curve_key(image, ex, layer, k[0], res) for k, res in results.items()}
    missing = [k for k, key in keys.items() if key not in store]
    active = st.session_state.get("faith_active") == image.sha256
    c1, c2 = st.columns([1, 4])
    c1.button("Score faithfulness", key="faith_run", disabled=not missing or active,
              on_click=st.session_state.update, args=({"faith_active": image.sha256, "faith_stopped": None},),
              help="Deletion and insertion (RISE): the class probability as the map's pixels are removed from "
                   "the input (to zero), or added to a blurred copy, 224 pixels per step at 224 × 224.")
    if active and missing:
        stop = c2.empty()
        # The click interrupts the run; the message names the tile in progress ("faith_scoring").
        stop.button("Stop", key="faith_stop", on_click=st.session_state.update,
                    args=({"faith_active": None, "faith_stopped": image.sha256},))
        bar = st.progress(0.0)
        try:
            for n, k in enumerate(missing):
                t, m = k
                res = results[k]
                fwd = ex.forward(image, layer, res.input_size)  # the pass the tile's map came from
                st.session_state["faith_scoring"] = labels[m]

                def progress(done, total, game, n=n, label=labels[m]):
                    bar.progress((n + (done / total + (game == "insertion")) / 2) / len(missing),
                                 text=f"{label}: {game} {done}/{total}")

                target = t if res.target is not None else int(fwd.probs.argmax())
                curves = [game(fwd.backbone.model, fwd.input, res.map, target, cancel=cancel,
                               progress=lambda d, total, g=game.__name__: progress(d, total, g))
                          for game in (deletion, insertion)]
                store[keys[k]] = curves  # both games finished: never a partial curve
                while len(store) > FAITH_KEEP:
                    store.pop(next(iter(store)))
            st.session_state.pop("faith_scoring", None)
        except Cancelled:
            st.session_state.update({"faith_stopped": image.sha256, "faith_active": None})
            st.rerun()  # this run drew "Score faithfulness" disabled (running); the next draws it enabled
        bar.empty()
        stop.empty()
        st.session_state["faith_active"] = None
    if st.session_state.get("faith_stopped") == image.sha256 and any(key not in store for key in keys.values()):
        st.warning(FAITH_STOPPED.format(what=st.session_state.get("faith_scoring") or "the tile in progress"))
    shown = [(k, store[key]) for k, key in keys.items() if key in store]
    if not shown:
        return
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    for i, ((t, m), (dele, ins)) in enumerate(shown):
        colour = palette[i % len(palette)]
        name = labels[m] + (f" · class {t}" if len({k[0] for k, _ in shown}) > 1 else "")
        for curve, dash in ((dele, "solid"), (ins, "dash")):
            x = np.linspace(0, 1, len(curve.scores))
            fig.add_trace(go.Scatter(x=x, y=curve.scores, mode="lines", line={"color": colour, "dash": dash},
                                     name=f"{name} {curve.mode} (AUC {curve.auc:.3f})"))
    fig.update_layout(xaxis_title="fraction of pixels removed (deletion, solid) / inserted (insertion, dashed)",
                      yaxis_title="class probability", height=420, margin={"t": 30})
    st.plotly_chart(fig, key="faith_plot")


def agreement_matrix(results: dict, targets: list[int], backbone, size: tuple[int, int], norm: str, threshold: float,
                     specs: dict) -> None:
    """Pearson r and IoU at the threshold (0.5 when the page's is off) between the maps of one
    class, as normalised on the tiles (cam_core.metrics.agreement): with several class rows
    (top-k), of the class picked above the matrix (the first row's by default)."""
    labels = {n: s.label for n, s in specs.items()}
    if len({m for _, m in results}) < 2:
        return
    t = threshold or 0.5
    with st.expander("Agreement between methods"):
        target = targets[0]
        if len(targets) > 1:
            if st.session_state.get("agree_class") not in targets:  # another image's or backbone's classes
                st.session_state.pop("agree_class", None)
            target = st.selectbox("Class", targets, key="agree_class", format_func=backbone.short_name,
                                  help="The matrix compares the methods' maps of this class (one of the rows above).")
        # A class-agnostic map (Eigen-CAM) is the same for every class: it takes part for each.
        maps = {labels[m]: to_image_map(res.map, size, norm) for (c, m), res in results.items() if c == target}
        if len(maps) < 2:
            st.caption("Two maps or more of this class are needed to compare them.")
            return
        ag = agreement(maps, t)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Pearson r", f"IoU of map ≥ {t:.2f}"),
                            horizontal_spacing=0.15)
        for col, values in ((1, ag.pearson), (2, ag.iou)):
            fig.add_trace(go.Heatmap(z=values.tolist(), x=list(ag.names), y=list(ag.names), zmin=-1 if col == 1 else 0,
                                     zmax=1, colorscale="RdBu" if col == 1 else "Viridis", texttemplate="%{z:.2f}",
                                     showscale=False), row=1, col=col)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(height=120 + 40 * len(ag.names), margin={"t": 40})
        st.plotly_chart(fig, key="agreement_plot")
