"""Evaluate page: score methods on a dataset with ground truth, as `cam_core evaluate` does; the
summary, per-class results, and a gallery of the images where a method fails worst (or where
two methods disagree most), each one click away from the Compare page."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from cam_core import BACKBONES, Cancelled
from cam_core.banks import split_bank
from cam_core.evaluate import ImageFolder, evaluate, evaluate_faithfulness, reads_bank
from cam_core.groundtruth import GroundTruthError, find_ground_truth, outline
from cam_core.images import ImageError, load_image, resolve_under
from cam_core.methods import get_method
from cam_core.methods.base import NEEDS_BANK
from cam_core.metrics import FAITHFULNESS
from cam_core.render import downscale_for_display, render_tile, to_image_map
from cam_core.results import (
    HIGHER_IS_BETTER,
    ResultCache,
    dataset_key,
    disagreements,
    per_class,
    rank_failures,
    shown_class,
)
from cam_core.testbed.generate import generate
from cam_core.voc import DatasetError, VOCDataset, VOCSample
from ui.common import (
    EXTRA_BACKBONES,
    ROOT,
    USER_ERRORS,
    allowed_image_dirs,
    drop_stale_choice,
    get_explainer,
    keep_widget_state,
    page_selection,
    param_input,
    stop_all_requested,
    testbed_dir,
)

TESTBED = "Testbed (val split, generated on first use)"
VOC = "VOC-layout folder"
FOLDER = "Image folder (no ground truth: faithfulness only)"
DEFAULT_BACKBONE = "testbed-cnn"
DEFAULT_METHODS = ["cam", "gradcam"]
# The columns of `cam_core evaluate`'s printed table, in its order (faithfulness ones added when asked)
SUMMARY_KEYS = ["images", "seed_mIoU", "best_bg_threshold", "fg_precision", "fg_recall", "recall_body", "recall_part",
                "gt_known_loc", "top1_loc", "energy_pointing_game", "pointing_game", "maxboxacc_v2", "pxap"]
GALLERY_SIZE = 8
BANK_SPLIT = "train"  # LPCAM's bank: the dataset's train split, as `cam_core evaluate`'s --bank-from default
SIDEBAR = "the sidebar's backbone"


def cache_dir() -> Path:
    """Where evaluation results are kept: CAM_EXPLORER_EVAL_DIR, else ./data/eval."""
    return Path(os.environ.get("CAM_EXPLORER_EVAL_DIR", ROOT / "data" / "eval"))


def testbed_size() -> int:
    """Images of the generated testbed (CAM_EXPLORER_TESTBED_N; 1200 as `cam_core testbed generate`)."""
    return int(os.environ.get("CAM_EXPLORER_TESTBED_N", "1200"))


@st.cache_resource(show_spinner="Generating the testbed (first use)…")
def ensure_testbed(root: str, n: int) -> str:
    # cache_resource: generated once per server even when several sessions open the page at once
    if not (Path(root) / "ImageSets" / "Segmentation" / "val.txt").is_file():
        generate(root, n=n, seed=0)
    return root


def dataset_controls() -> VOCDataset | ImageFolder | None:
    kind = st.radio("Dataset", [TESTBED, VOC, FOLDER], key="ev_kind", horizontal=True)
    try:
        if kind == TESTBED:
            return VOCDataset(ensure_testbed(str(testbed_dir()), testbed_size()), "val")
        c1, c2 = st.columns([3, 1])
        what = "VOC-layout folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)" if kind == VOC else \
            "Folder of images (sub-folders included)"
        typed = c1.text_input(f"{what} under " + ", ".join(str(d) for d in allowed_image_dirs()), key="ev_folder")
        split = c2.text_input("Split", "val", key="ev_split") if kind == VOC else None
        if not typed:
            st.info("Type the folder's path.")
            return None
        root = resolve_under(typed, allowed_image_dirs())
        return VOCDataset(root, split) if kind == VOC else ImageFolder(root)
    except (ImageError, DatasetError, OSError, ValueError) as exc:
        st.error(str(exc))
        return None


def method_controls(ex, key: str, folder: bool):
    specs = {s.name: s for s in ex.methods()}
    drop_stale_choice("ev_methods", specs)
    methods = st.multiselect("Methods", list(specs), default=[m for m in DEFAULT_METHODS if m in specs],
                             key="ev_methods", format_func={n: s.label for n, s in specs.items()}.__getitem__)
    with st.expander("Layer, method parameters, faithfulness metrics, images"):
        layers = ex.backbone.layer_choices()
        layer = st.selectbox("Feature layer", layers, index=layers.index(ex.backbone.default_layer),
                             key=f"ev_layer_{key}")
        params: dict[str, dict] = {}
        for m in methods:
            for p in specs[m].params:
                if p.name == "labels":  # SIPE: the evaluation gives it each image's true labels
                    continue
                params.setdefault(m, {})[p.name] = param_input(p, f"{specs[m].label}: {p.name}",
                                                               key=f"ev_param_{m}_{p.name}")
        metrics = st.multiselect("Faithfulness metrics (of the top-1 class's map; slow: many forwards per image)",
                                 FAITHFULNESS, default=["deletion", "insertion"] if folder else [],
                                 key="ev_metrics_folder" if folder else "ev_metrics")
        limit = st.number_input("First N images only (0 = all)", 0, None, 0, key="ev_limit")
    return methods, layer, params, metrics, int(limit) or None


def summary_table(summaries: list[dict], metrics: list[str]) -> pd.DataFrame:
    keys = [k for k in SUMMARY_KEYS if any(k in s for s in summaries)] + list(metrics) + ["seconds_per_image"]
    return pd.DataFrame([{"method": s["method"], **{k: s.get(k, float("nan")) for k in keys}} for s in summaries]
                        ).set_index("method")


STOPPED = "Stopped. The finished images are cached: Run resumes from them."


def lpcam_bank_source(ds, backbone, methods: list[str], params: dict):
    """Where LPCAM's bank comes from, as `cam_core evaluate` by default (--bank-from train): the
    train split of the dataset's folder (cam_core.banks.split_bank, cached on disk as banks.py
    caches every dataset bank); for an image folder (no splits) the backbone's own dataset bank
    (Backbone.default_bank). None when no method reads a bank (LPCAM with source=image) or the
    folder's backbone declares none: LPCAM clusters each image's own pixels."""
    if not reads_bank(methods, params):
        return None
    return backbone.default_bank if isinstance(ds, ImageFolder) else split_bank(ds.root, BANK_SPLIT)


def run_evaluation(ds, ex, methods, layer, params, metrics, limit, cancel) -> None:
    """Run, resume and stop: the rows of each finished image are on disk (ResultCache) before
    the next one starts. Stopped by the page's Stop (a click interrupts the run at its next
    progress update; its callback ends the run) or by cancel() (the sidebar's Stop), asked
    before each image and between the batches of a bank build."""
    settings = (str(ds.root), ds.split, ex.backbone.name, layer, tuple(methods), repr(params), tuple(metrics), limit)
    folder = isinstance(ds, ImageFolder)
    source = lpcam_bank_source(ds, ex.backbone, methods, params)
    loaded = ex.dataset_bank(source, load=False) if source is not None else None
    total = min(len(ds), limit or len(ds))
    known = [m for m in methods if source is None or loaded is not None or not reads_bank([m], params)]
    have = ResultCache(cache_dir(), dataset_key(ds), ex.backbone, layer, known, params,
                       loaded.bank if loaded is not None else None).cached_images()
    st.caption(f"{total} images · cached on disk: " + ", ".join(
        f"{m} {min(have[m], total)}" if m in have else f"{m} (known once its bank is loaded)" for m in methods))
    c1, c2 = st.columns([1, 5])
    # Callbacks, not the buttons' return values: they run before the script, whatever reruns it.
    c1.button("Run", key="ev_run", type="primary", disabled=not methods, on_click=st.session_state.update,
              args=({"ev_active": settings, "ev_stopped": False},))
    if st.session_state.pop("ev_stopped", False):
        st.warning(STOPPED)
    if st.session_state.get("ev_active") != settings:
        return
    # A click on Stop interrupts the run in progress (at its next progress update) and reruns
    # the page: the images it finished are on disk.
    c2.button("Stop", key="ev_stop", on_click=st.session_state.update, args=({"ev_active": None, "ev_stopped": True},))
    bar = st.progress(0.0, text="starting…")

    def progress(done: int, n: int) -> None:
        bar.progress(done / n, text=f"{done}/{n} images")

    rows: list[dict] = []
    bank = described = None
    try:
        if source is not None:
            def bank_progress(done: int, n: int) -> None:
                bar.progress(done / n, text=f"LPCAM's bank (first use): {done}/{n} images of {source.name}")

            try:
                cached = ex.dataset_bank(source, bank_progress, cancel)
            except DatasetError as exc:  # e.g. a VOC folder without a train split
                raise DatasetError(f"LPCAM's bank is built from the dataset's {BANK_SPLIT} split, as `cam_core "
                                   f"evaluate` does: {exc}. Set LPCAM's source to image to cluster each image's "
                                   "own pixels instead.") from None
            bank = cached.bank
            origin = ("the backbone's own dataset bank" if folder else f"the dataset's {BANK_SPLIT} split, as "
                      f"`cam_core evaluate` builds it (--bank-from {BANK_SPLIT})")
            described = f"LPCAM's bank: {bank.describe(ex.backbone.short_name)} — {origin}; cached in {cached.path}"
        cache = ResultCache(cache_dir(), dataset_key(ds), ex.backbone, layer, methods, params, bank)
        if folder:
            summaries = evaluate_faithfulness(ds, ex, methods, params, metrics, limit, progress, rows, cache, layer,
                                              cancel=cancel, bank=bank)
        else:
            summaries = evaluate(ds, ex, methods, params, bank=bank, limit=limit, progress=progress, rows_out=rows,
                                 metrics=metrics, store=cache, layer=layer, keep_stats=True, cancel=cancel)
    except Cancelled:
        bar.empty()
        st.warning(STOPPED)
        return
    except (*USER_ERRORS, ValueError) as exc:  # DatasetError is a ValueError
        st.error(str(exc))
        return
    finally:
        st.session_state.pop("ev_active", None)
    bar.empty()
    if any(NEEDS_BANK in get_method(m).needs for m in methods) and described is None:
        described = "LPCAM's bank: none, each image's own pixels " + (
            "(source=image)" if not reads_bank(methods, params) else "(the backbone declares no dataset bank)")
    st.session_state["ev_result"] = {
        "root": str(ds.root), "split": ds.split, "folder": folder, "backbone": ex.backbone.name, "explainer": ex,
        "choice": st.session_state.get("ev_backbone"),
        "class_names": tuple(ex.backbone.class_names) if folder else ds.class_names,
        "layer": layer, "methods": methods, "params": params, "metrics": metrics, "summaries": summaries, "rows": rows,
        "bank": bank, "bank_line": described,
    }


def _tile(ex, result: dict, row: dict, method: str, cls: int, caption: str, key: str) -> None:
    root = Path(result["root"])
    path = root / row["image"] if result["folder"] else VOCSample(row["image"], root, ()).image_path
    image = load_image(path)
    try:
        res = ex.compute(image, method, cls, result["layer"], result["params"].get(method), bank=result.get("bank"))
    except USER_ERRORS as exc:
        st.error(str(exc))
        return
    display, _ = downscale_for_display(image.rgb, 320)
    gt = find_ground_truth(path, image.size, result["class_names"][cls])
    tile = render_tile(display, to_image_map(res.map, display.shape[:2], "minmax"), 0.5, "jet")
    st.image(outline(tile, gt) if gt is not None else tile, width="stretch")
    st.caption(caption)
    specs = {s.name: s for s in ex.methods()}
    state = {"image_source": "Path", "image_path": str(path),
             "methods": [method], f"layer_{result['backbone']}": result["layer"], "target_for":
             (image.sha256, result["backbone"]), "target": cls, "topk": 1, "ev_open_compare": True,
             **({} if result["choice"] == SIDEBAR else {"backbone_choice": result["backbone"]}),
             **{f"param_{method}_{p.name}": result["params"].get(method, {}).get(p.name, p.default)
                for p in specs[method].params if p.name != "labels"},
             # the Compare page's LPCAM then reads the bank this evaluation used
             **({"lpcam_bank": result["bank"]} if result.get("bank") is not None and NEEDS_BANK in specs[method].needs
                else {})}
    # A callback, so that the sidebar's widgets take these values before they are drawn again;
    # a bound method, not a function of this script (see compare.py).
    st.button("Open in Compare", key=key, on_click=st.session_state.update, args=(state,))


def gallery(ex, result: dict) -> None:
    st.subheader("Failure gallery")
    rows = result["rows"]
    metrics = [m for m in HIGHER_IS_BETTER if any(r.get(m) is not None for r in rows)]
    methods = result["methods"]
    for key, options in (("ev_gallery_metric", metrics), ("ev_gallery_method", methods),
                         ("ev_gallery_other", methods)):
        drop_stale_choice(key, options)  # a kept choice that these results do not have
    c1, c2, c3, c4 = st.columns(4)
    mode = c1.radio("Show", ["worst first", "two methods disagree most"], key="ev_gallery_mode")
    metric = c2.selectbox("Metric", metrics, key="ev_gallery_metric",
                          help="mIoU_at_best_t: the image's seed mIoU at the method's best background threshold")
    a = c3.selectbox("Method", methods, key="ev_gallery_method")
    names = result["class_names"]
    cols = st.columns(4)
    if mode == "worst first":
        for i, row in enumerate(rank_failures(rows, a, metric, GALLERY_SIZE)):
            cls = shown_class(row, metric, names)
            with cols[i % 4]:
                _tile(ex, result, row, a, cls, f"{row['image']} · {names[cls]} · {metric} {row[metric]:.3f}",
                      f"ev_open_{i}")
        return
    others = [m for m in methods if m != a]
    if not others:
        st.info("Evaluate two methods or more to compare them.")
        return
    b = c4.selectbox("against", others, key="ev_gallery_other")
    for i, pair in enumerate(disagreements(rows, a, b, metric, GALLERY_SIZE // 2)):
        cls = shown_class(pair["a"], metric, names)
        for j, (m, row) in enumerate(((a, pair["a"]), (b, pair["b"]))):
            with cols[(2 * i + j) % 4]:
                _tile(ex, result, row, m, cls, f"{row['image']} · {names[cls]} · {m} {metric} {row[metric]:.3f}",
                      f"ev_open_{i}_{j}")


if st.session_state.pop("ev_open_compare", False):
    keep_widget_state()  # as sidebar() does: this run draws no widget before it leaves
    st.switch_page("pages/compare.py")
sel = page_selection()
st.title("Evaluate methods")
st.caption("Scores against the masks and boxes of a dataset, as `python -m cam_core evaluate` computes them; "
           "results are cached on disk, so a stopped run resumes.")
ds = dataset_controls()
if ds is not None:
    choices = list(BACKBONES) + EXTRA_BACKBONES + [SIDEBAR]
    drop_stale_choice("ev_backbone", choices)
    choice = st.selectbox("Backbone", choices, index=choices.index(DEFAULT_BACKBONE), key="ev_backbone",
                          help="Its classes must be the dataset's (the testbed's models for the testbed). The "
                               "sidebar's backbone may be a local checkpoint, e.g. one trained on VOC.")
    ex = sel.explainer if choice == SIDEBAR else get_explainer(choice, sel.device)
    name = ex.backbone.name
    folder = isinstance(ds, ImageFolder)
    if not folder and ex.backbone.num_classes != len(ds.class_names):
        st.error(f"{name} has {ex.backbone.num_classes} classes, the dataset {len(ds.class_names)}: choose a "
                 "backbone trained on its classes.")
    else:
        run_evaluation(ds, ex, *method_controls(ex, name, folder), cancel=stop_all_requested)

result = st.session_state.get("ev_result")
if result is not None:
    st.subheader("Summary")
    st.caption(f"{result['backbone']} · layer `{result['layer']}` · {result['root']} ({result['split']})")
    st.dataframe(summary_table(result["summaries"], result["metrics"]))
    if result.get("bank_line"):
        st.caption(result["bank_line"])
    if not result["folder"]:
        st.subheader("Per class")
        st.dataframe(pd.DataFrame(per_class(result["rows"], result["summaries"], result["class_names"])),
                     hide_index=True)
    try:
        gallery(result["explainer"], result)
    except (GroundTruthError, ImageError, OSError) as exc:
        st.error(str(exc))
