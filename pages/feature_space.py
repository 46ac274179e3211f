"""Feature Space page: pixels, class centres and prototypes in one map; LPCAM and SIPE tuned live."""

from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from cam_core import BankError, Cancelled, PrototypeBank, build_bank, folder_items
from cam_core.featurespace import (
    BANK_BG,
    BANK_FG,
    CENTRE,
    LP_CLASS,
    LP_CONTEXT,
    PIXEL,
    PROTOTYPE_KINDS,
    SIPE_PROTO,
    base_cloud,
    embed,
    prototype_cloud,
    similarity_map,
)
from cam_core.images import ImageError, resolve_under
from cam_core.methods import get_method
from cam_core.prototypes import saved_banks
from cam_core.render import (
    downscale_for_display,
    highlight,
    label_overlay,
    render_tile,
    resize_nearest,
    to_image_map,
)
from pages.common import USER_ERRORS, allowed_image_dirs, bank_dir, drop_stale_choice, param_input, sidebar

THIS_IMAGE = "this image (its own pixels)"
BUILD = "build from a folder…"
DATASET = object()  # bank_panel's answer: the backbone's dataset bank
MARKERS = {PIXEL: "circle", BANK_FG: "circle-open", BANK_BG: "x-thin-open", CENTRE: "star",
           LP_CLASS: "diamond", LP_CONTEXT: "diamond-open", SIPE_PROTO: "square"}
KIND_COLOURS = {BANK_FG: "#e377c2", BANK_BG: "#7f7f7f", CENTRE: "#d62728", LP_CLASS: "#2ca02c",
                LP_CONTEXT: "#9467bd", SIPE_PROTO: "#ff7f0e"}

st.session_state["fs_page_runs"] = st.session_state.get("fs_page_runs", 0) + 1
sel = sidebar()
ex, image, bb = sel.explainer, sel.image, sel.backbone
st.title("Feature space")
st.caption("Where the class centre (the classifier's row) sits among the pixel features, and how "
           "LPCAM's prototypes and SIPE's seeds cover the rest of the object.")
if (reason := get_method("cam").refusal(bb)) is not None:  # no class centres to place (issue 13)
    st.info(f"{reason}. This page places pixel features around the classifier's class centres; the Compare "
            "page offers the methods that apply to this backbone.")
    st.stop()
preds = ex.predict(image, 5)
drop_stale_choice("fs_target", [p.index for p in preds])
# format_funcs: a dict's __getitem__, not lambdas of this script (see pages/compare.py: Streamlit keeps every
# widget's format_func, and a lambda here would keep this run's image and forward pass alive).
target = st.selectbox("Class", [p.index for p in preds], key="fs_target",
                      format_func={p.index: f"{bb.short_name(p.index)} ({p.index}) · {p.probability:.1%}"
                                   for p in preds}.__getitem__)


# ----- where LPCAM's class features come from ----------------------------------------------
@st.cache_resource(max_entries=8, show_spinner=False)
def load_bank(path: str, mtime: float) -> PrototypeBank:
    return PrototypeBank.load(path)


def _last_bank_file():
    return bank_dir() / "last.json"


def _remember_bank(name: str) -> None:
    last = {}
    if _last_bank_file().exists():
        last = json.loads(_last_bank_file().read_text() or "{}")
    last[bb.name] = name
    bank_dir().mkdir(parents=True, exist_ok=True)
    _last_bank_file().write_text(json.dumps(last))


def dataset_bank() -> PrototypeBank | None:
    """The backbone's dataset bank (cam_core.banks): built on the first use with a progress bar
    (a click elsewhere interrupts it), then loaded from the disk cache."""
    name = bb.default_bank.name
    bar = st.progress(0.0, text=f"LPCAM's bank from {name}: building it once (then cached on disk)…")
    try:
        return ex.default_bank(progress=lambda d, t: bar.progress(d / t, text=f"{name}: {d}/{t} images"))
    except (*USER_ERRORS, OSError) as exc:
        st.error(f"LPCAM's bank from {name}: {exc}")
        return None
    finally:
        bar.empty()


def bank_panel() -> PrototypeBank | None:
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
            folder = st.text_input("Folder (ImageFolder layout: class = subfolder; or flat: labelled by the "
                                   "model's top-1), under " + ", ".join(str(d) for d in allowed_image_dirs()),
                                   str(allowed_image_dirs()[0]), key="fs_folder")
            name = st.text_input("Bank name", "samples", key="fs_bank_name")
            st.button("Build and save", key="fs_build", on_click=st.session_state.__setitem__,
                      args=("fs_build_requested", True))
            if st.session_state.pop("fs_build_requested", False):
                try:
                    scan = folder_items(resolve_under(folder, allowed_image_dirs()), bb.class_names)
                    bar = st.progress(0.0, text="reading images…")
                    st.button("Stop", key="fs_build_stop")  # clicking it interrupts this run
                    report = build_bank(ex, scan.items, name=name,
                                        progress=lambda d, t: bar.progress(d / t, text=f"{d}/{t} images"))
                    path = report.bank.save(bank_dir() / f"{name}.safetensors")
                    st.session_state["fs_bank_notes"] = [f"skipped {line}" for line in report.skipped] + \
                        [f"ignored {line}" for line in scan.ignored]
                    _remember_bank(path.name)
                    st.session_state["fs_bank_pending"] = path.name
                    st.rerun()
                except (ImageError, BankError, Cancelled) as exc:
                    st.error(str(exc))
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
                _remember_bank(choice)
            st.caption(bank.describe())
            if target not in bank.classes:
                st.info(f"This bank has no images of {bb.short_name(target)}: LPCAM uses the image's own pixels.")
            return bank
        if last not in (None, default):
            _remember_bank(default)
        if bb.default_bank is not None:
            st.caption(f"LPCAM clusters the pixels of {bb.default_bank.name} (the bank is built once, then cached "
                       "on disk); its `source` control switches to this image's own pixels.")
            return DATASET  # built below, outside the collapsed expander, so its progress shows
        st.caption("LPCAM clusters this image's own pixels (source (a) of the paper's recipe).")
    return None


bank = bank_panel()
if bank is DATASET:
    bank = dataset_bank()
    if bank is not None:
        st.caption(f"LPCAM's bank: {bank.describe()}")
st.session_state["lpcam_bank"] = bank  # the Compare page's LPCAM uses it too


@st.cache_resource(show_spinner=False)
def embedding_store() -> OrderedDict:
    # Embeddings by point-set key (objects kept, for placing prototypes later); shared, small.
    return OrderedDict()


def get_embedding(cloud, method, perplexity):
    store = embedding_store()
    key = (cloud.key, method, perplexity)
    if key not in store:
        bar = st.progress(0.0, text="t-SNE…") if method == "tsne" else None
        store[key] = embed(cloud, method, perplexity, progress=(lambda f: bar.progress(f, text=f"t-SNE {f:.0%}")) if bar else None)
        if bar is not None:
            bar.empty()
        while len(store) > 16:
            store.popitem(last=False)
    return store[key]


def timed(fn):
    """(fn(), milliseconds it took)"""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


# ----- everything tuned live: one fragment, so a slider reruns only this part -----------------
# Inside it: widgets first, then every computation, then the images and the plot. Images sent
# early make the server thread and the browser busy (GIL and CPU) while the maps compute:
# measured 10-20x slower K-means and drawing on the 2-core machine.
@st.fragment
def tuning() -> None:
    st.session_state["fs_fragment_runs"] = st.session_state.get("fs_fragment_runs", 0) + 1
    display, _ = downscale_for_display(image.rgb, 480)
    size = display.shape[:2]

    # 1. widgets
    threshold = st.slider("Display threshold (contour and box; 0 = off)", 0.0, 1.0, 0.0, 0.05, key="fs_threshold")
    threshold_caption = st.empty()
    left, right = st.columns(2)
    left.subheader("LPCAM")
    cols = left.columns(2)
    lp_params = {p.name: param_input(p, p.name, key=f"fs_lp_{p.name}", container=cols[i % 2],
                                     slider=p.name in ("k", "tau", "mu_f", "mu_b", "mu_low", "rank"))
                 for i, p in enumerate(get_method("lpcam").params)}
    lp_out = left.container()
    right.subheader("SIPE")
    sp_params = {p.name: param_input(p, p.name, key=f"fs_sipe_{p.name}", slider=True, container=right)
                 for p in get_method("sipe").params}
    sp_out = right.container()
    st.subheader("Pixels, class centres and prototypes")
    e1, e2, e3, e4 = st.columns(4)
    method = e1.radio("Embedding", ["pca", "tsne"], horizontal=True, key="fs_embed",
                      format_func={"pca": "PCA (instant)", "tsne": "t-SNE"}.get)
    perplexity = e1.slider("Perplexity", 5, 50, 30, key="fs_perplexity", disabled=method != "tsne")
    if bb.fixed_input_size:
        scale = 1.0
        e2.caption(f"Image at 1× only: {bb.name} takes {bb.input_size[0]} px inputs.")
    else:
        scale = e2.select_slider("Image at", [1.0, 2.0, 3.0, 4.0], 2.0, key="fs_scale",
                                 format_func={s: f"{s:g}× ({int(bb.input_size[0] * s)} px)"
                                              for s in (1.0, 2.0, 3.0, 4.0)}.__getitem__,
                                 help="A larger copy of the image gives more pixel points (the feature grid grows).")
    cap = e2.number_input("Most pixel points", 100, 20000, 5000, 100, key="fs_cap")
    use_bank = e3.toggle("Bank pixels too", value=bank is not None, key="fs_use_bank", disabled=bank is None)
    colour_by = e4.selectbox("Colour pixels by", ["CAM", "LPCAM", "Grad-CAM", "SIPE IS-CAM", "SIPE seed",
                                                   "K-means cluster (LPCAM)"], key="fs_colour")

    # 2. computations (all cached by the explainer or the embedding store)
    lp = sp = None
    lp_err = sp_err = None
    try:
        lp, lp_ms = timed(lambda: ex.compute(image, "lpcam", target, params=lp_params, bank=bank))
        if "selection" not in lp.extras:  # no pixel of the class to cluster: an empty map, its note says why
            lp, lp_err = None, lp.note
    except USER_ERRORS as exc:
        lp_err = str(exc)
    try:
        sp, sp_ms = timed(lambda: ex.compute(image, "sipe", target, params=sp_params))
    except USER_ERRORS as exc:
        sp_err = str(exc)
    cam = ex.compute(image, "cam", target)
    t0 = time.perf_counter()
    tiles = {"CAM": render_tile(display, to_image_map(cam.map, size, "max"), 0.5, "jet", threshold)}
    if lp is not None:
        tiles["LPCAM"] = render_tile(display, to_image_map(lp.map, size, "max"), 0.5, "jet", threshold)
    if sp is not None:
        tiles["IS-CAM"] = render_tile(display, to_image_map(sp.map, size, "max"), 0.5, "jet", threshold)
    render_ms = (time.perf_counter() - t0) * 1000
    fwd = ex.forward(image)
    cloud = base_cloud(fwd, [p.index for p in preds], scale, bank if use_bank else None, target,
                       lp_params["tau"], int(cap))
    try:
        emb = get_embedding(cloud, method, perplexity)
    except (Cancelled, ValueError) as exc:
        st.error(str(exc))
        return
    protos = prototype_cloud(lp, sp, fwd)
    placed = emb.place(protos.vectors)
    coords = np.concatenate([emb.coords, placed]) if len(placed) else emb.coords
    kinds = cloud.kinds + protos.kinds
    labels = cloud.labels + protos.labels
    h, w = cloud.grid
    values, categorical = _pixel_colours(colour_by, cloud, fwd, lp, sp, target, (h, w))

    # 3. output
    threshold_caption.caption(f"Threshold: drawing the tiles took {render_ms:.1f} ms")
    with lp_out:
        if lp is None:
            st.error(lp_err)
        else:
            sel_ = lp.extras["selection"]
            st.caption(f"LPCAM: {lp.ms:.0f} ms to compute (K-means of it: {sel_.kmeans_ms:.0f} ms, only "
                       f"when K or tau change); this run {lp_ms:.0f} ms · {sel_.n_fg} foreground / {sel_.n_bg} "
                       f"context pixels · {lp.note}")
            c1, c2 = st.columns(2)
            c1.image(tiles["CAM"], caption="CAM", width="stretch")
            c2.image(tiles["LPCAM"], caption="LPCAM", width="stretch")
            with st.expander("Clusters and what the classifier says of them"):
                st.dataframe(_cluster_rows(sel_), hide_index=True, width="stretch")
    with sp_out:
        if sp is None:
            st.error(sp_err)
        else:
            seeds = sp.extras["seeds"].cpu().numpy()
            names = ["background"] + [bb.short_name(c) for c in sp.extras["labels"][1:]]
            share = ", ".join(f"{n}: {(seeds == j).mean():.0%}" for j, n in enumerate(names))
            st.caption(f"SIPE: {sp.ms:.0f} ms to compute; this run {sp_ms:.0f} ms · seeds {share}")
            c1, c2 = st.columns(2)
            c1.image(label_overlay(display, resize_nearest(seeds, size)), width="stretch",
                     caption="seeds (tinted: the image's classes; clear: background)")
            c2.image(tiles["IS-CAM"], caption="IS-CAM", width="stretch")

    fig = _figure(coords, kinds, labels, cloud, values, categorical, colour_by)
    fig.update_layout(title_y=0.97, title=f"{method.upper()} of {len(cloud)} points (+{len(protos)} prototypes placed) · "
                      f"computed in {emb.seconds:.1f} s, cached")
    plot_col, view_col = st.columns([3, 2])
    with plot_col:
        event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key="fs_plot",
                                width="stretch")
    chosen = _selected_indices(event)
    # Also a list: a click on a small marker is easy to miss, and a list works by keyboard.
    pickable = [i for i, k in enumerate(kinds) if k == CENTRE or k in PROTOTYPE_KINDS]
    # base_cloud puts the centres of `preds` in their order; the target is one of them.
    centre_of_target = int(cloud.indices(CENTRE)[[p.index for p in preds].index(target)])
    with view_col:
        if pickable:
            picked = st.selectbox("Similarity map of", pickable, index=pickable.index(centre_of_target),
                                  format_func={i: labels[i] for i in pickable}.__getitem__,
                                  key=f"fs_sim_{cloud.key}_{protos.key}",
                                  help="Or click a centre or prototype in the plot; select pixels to locate them.")
        sel_pixels = [i for i in chosen if kinds[i] == PIXEL]
        others = [i for i in chosen if kinds[i] != PIXEL]
        if sel_pixels:
            mask = np.zeros((h, w), bool)
            mask[cloud.rows[sel_pixels], cloud.cols[sel_pixels]] = True
            st.image(highlight(display, resize_nearest(mask, size)), width="stretch",
                     caption=f"{len(sel_pixels)} selected pixel(s) of the {h}×{w} feature grid")
        elif others or pickable:
            i = others[0] if others else picked
            vec = cloud.vectors[i] if i < len(cloud) else protos.vectors[i - len(cloud)]
            feats = fwd.head_features if scale == 1.0 else fwd.features_at(scale)
            sim = similarity_map(vec, feats)
            st.image(render_tile(display, to_image_map(sim, size, "minmax"), 0.55, "jet", threshold or None),
                     width="stretch", caption=f"cosine similarity of every pixel to {labels[i]} "
                     f"(range {float(sim.min()):.2f} … {float(sim.max()):.2f})")
        else:
            st.image(display, width="stretch",
                     caption="Select pixels (lasso, box or click) to see where they are; click a centre or a "
                     "prototype to see its similarity map.")
    with st.expander("Diagnostics"):
        st.caption(f"page runs: {st.session_state['fs_page_runs']} · fragment runs: "
                   f"{st.session_state['fs_fragment_runs']} · explainer: {dict(ex.stats)}")


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


def _figure(coords, kinds, labels, cloud, values, categorical, colour_by) -> go.Figure:
    h, w = cloud.grid
    fig = go.Figure()
    for kind in [PIXEL, BANK_FG, BANK_BG, CENTRE, LP_CLASS, LP_CONTEXT, SIPE_PROTO]:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        xy = coords[idx]
        if kind == PIXEL:
            rr, cc = cloud.rows[idx], cloud.cols[idx]
            hover = [f"{labels[i]}<br>image x≈{(c + .5) * image.size[1] / w:.0f}, y≈{(r + .5) * image.size[0] / h:.0f}"
                     f"<br>{colour_by}: {v}" for i, r, c, v in zip(idx, rr, cc, values)]
            marker = dict(size=6, symbol="circle", line=dict(width=0))
            if categorical:
                for cat in sorted(set(values)):
                    sub = [j for j, v in enumerate(values) if v == cat]
                    fig.add_trace(go.Scatter(x=xy[sub, 0], y=xy[sub, 1], mode="markers", name=f"pixel: {cat}",
                                             marker=marker, customdata=[idx[j] for j in sub],
                                             hovertext=[hover[j] for j in sub], hoverinfo="text"))
                continue
            marker.update(color=values, colorscale="Jet", cmin=0, cmax=1, colorbar=dict(title=colour_by, len=0.6))
            fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name="pixel", marker=marker,
                                     customdata=idx, hovertext=hover, hoverinfo="text"))
        else:
            big = kind not in (BANK_FG, BANK_BG)
            fig.add_trace(go.Scatter(
                x=xy[:, 0], y=xy[:, 1], mode="markers+text" if kind == CENTRE else "markers", name=kind,
                marker=dict(size=15 if big else 5, symbol=MARKERS[kind], color=KIND_COLOURS[kind],
                            line=dict(width=1, color="black") if big else None),
                text=[labels[i].removeprefix("centre: ") for i in idx] if kind == CENTRE else None,
                textposition="top center", customdata=idx, hovertext=[labels[i] for i in idx], hoverinfo="text"))
    fig.update_layout(height=560, margin=dict(l=10, r=10, t=70, b=10), dragmode="lasso", clickmode="event+select",
                      legend=dict(orientation="h", y=-0.08))
    return fig


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


def _pixel_colours(colour_by, cloud, fwd, lp, sp, target, grid):
    """One value per pixel point: a map value in [0, 1] or a category name."""
    idx = cloud.indices(PIXEL)
    rr, cc = cloud.rows[idx], cloud.cols[idx]
    if colour_by == "SIPE seed" and sp is not None:
        seeds = resize_nearest(sp.extras["seeds"].cpu().numpy(), grid)
        names = ["background"] + [bb.short_name(c) for c in sp.extras["labels"][1:]]
        return [names[int(s)] for s in seeds[rr, cc]], True
    if colour_by == "K-means cluster (LPCAM)" and lp is not None:
        sel_ = lp.extras["selection"]
        centres = [("class" if sel_.fg_selected[i] else "fg") + f" {i}" for i in range(len(sel_.fg_prob))]
        vecs = [sel_.fg.centers]
        if sel_.bg is not None:
            centres += [("context" if sel_.bg_selected[i] else "bg") + f" {i}" for i in range(len(sel_.bg_prob))]
            vecs.append(sel_.bg.centers)
        c = torch.nn.functional.normalize(torch.cat(vecs).float().cpu(), dim=1)
        nearest = (cloud.vectors[idx] @ c.T).argmax(dim=1).tolist()
        return [centres[j] for j in nearest], True
    source = {"CAM": "cam", "LPCAM": "lpcam", "Grad-CAM": "gradcam", "SIPE IS-CAM": "sipe"}.get(colour_by, "cam")
    res = {"lpcam": lp, "sipe": sp}.get(source) or ex.compute(image, source, target)
    m = to_image_map(res.map, grid, "max")
    return [round(float(v), 3) for v in m[rr, cc]], False


tuning()
