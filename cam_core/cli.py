"""Command line: ``python -m cam_core explain IMAGE... --backbone NAME --methods a,b --out DIR``.

Writes DIR/<folder>/<method>.npy (float32, the image's H x W, in [0,1]), DIR/<folder>/<method>.png
(overlay) and DIR/summary.json (strict JSON: a non-finite number is written as null).

<folder> is the image's file stem made safe: one plain name inside DIR, never ``.``/``..``,
no path separators, control or ``:*?"<>|`` characters (they become ``_``), no leading or
trailing dots and spaces, at most 150 bytes, ``image`` when nothing is left. A name already
taken in this run (case-insensitively), ``summary.json``, or an existing file or link in DIR
gets ``-2``, ``-3``...; each record in summary.json names its ``source`` path.

Nothing is written outside DIR and nothing is overwritten silently: a DIR that is not empty
is refused up front unless ``--overwrite`` is given (then the files of the same names are
replaced, other files are left). Every file is written to a temporary name in its folder and
renamed, so an interrupted run never leaves a half-written summary or map.

Bad input (arguments, an unwritable DIR, an unreadable image, a write that fails): one line
``error: ...`` on stderr, exit code 2, and the other images are still processed. A model whose
output is not finite (NaN/inf weights) gives a ``warning: ...`` line, a per-image ``warnings``
entry in summary.json, and exit code 2 too. An internal error on one image is reported on one
line and does not stop the batch either (exit code 1).

``--metrics LIST`` (with ``--mask FILE`` or ``--box X0,Y0,X1,Y1`` for the ground-truth ones)
adds ``"metrics"`` to each method's record in summary.json: energy, pointing, best_iou (and
best_iou_threshold) of the map against the region; deletion, insertion, average_drop,
increase, road of the map for the explained class (cam_core.metrics). Given a mask or a box
and no --metrics, the ground-truth metrics are computed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from .backbones import BackboneError, device_label, load_backbone, resolve_device
from .engine import Explainer, InputSizeError, LayerError, resolve_input_size
from .groundtruth import GroundTruthError, ground_truth_scores, read_mask
from .images import ImageError, load_image
from .kmeans import KMeansError
from .methods import METHODS, Cancelled, MethodError, get_method
from .methods.base import NEEDS_BANK
from .metrics import FAITHFULNESS, GROUND_TRUTH, SCORES, boxes_mask, faithfulness
from .prototypes import BankError, PrototypeBank, build_bank, folder_items
from .render import COLORMAPS, NORMALISATIONS, overlay, to_image_map
from .targets import TargetError, top_predictions

EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 1


USER_ERRORS = (ImageError, TargetError, LayerError, InputSizeError, MethodError, BackboneError, BankError, KMeansError,
               Cancelled, GroundTruthError)
SUMMARY = "summary.json"
NOT_FINITE = "the model's output is not finite (NaN/inf weights?): its predictions and maps are meaningless"


class OutputError(ValueError):
    """--out cannot be used as asked; the message is meant for the user."""


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _method_list(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise MethodError("--methods is empty: name at least one method (see `python -m cam_core list`)")
    for m in methods:
        get_method(m)
    return methods


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _parse_params(items: list[str], methods: list[str]) -> dict[str, dict]:
    """--param scorecam.batch_size=8 -> {'scorecam': {'batch_size': '8'}} (validated by the method)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise MethodError(f"--param expects METHOD.NAME=VALUE, got '{item}'")
        if method not in methods:
            raise MethodError(f"--param {item}: method {method} is not among --methods")
        out.setdefault(method, {})[name] = value
    for method, given in out.items():
        out[method] = get_method(method).resolve_params(given)
    return out


def _metric_list(text: str | None, allowed: tuple[str, ...]) -> list[str]:
    """--metrics a,b -> the names in canonical order; 'all' = every allowed name."""
    if text is None:
        return []
    names = [m.strip() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        return list(allowed)
    unknown = [m for m in names if m not in allowed]
    if unknown:
        raise MethodError(f"unknown metric {', '.join(repr(m) for m in unknown)}; choose from {', '.join(allowed)} or all")
    return [m for m in allowed if m in names]


def _box(text: str) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 (four integers, pixels), got {text!r}") from None
    if x1 < x0 or y1 < y0 or min(x0, y0) < 0:
        raise argparse.ArgumentTypeError(f"expected 0 <= X0 <= X1 and 0 <= Y0 <= Y1, got {text!r}")
    return x0, y0, x1, y1


def _ground_truth(args, size: tuple[int, int]) -> np.ndarray | None:
    """The region of --mask or --box on an image of this (height, width), or None."""
    h, w = size
    if args.mask is not None:
        mask = args.mask_array
        if mask.shape != (h, w):
            raise GroundTruthError(f"--mask is {mask.shape[1]} x {mask.shape[0]} pixels, the image {w} x {h}")
        return mask
    if args.box is not None:
        x0, y0, x1, y1 = args.box
        if x0 >= w or y0 >= h:
            raise GroundTruthError(f"--box {x0},{y0},{x1},{y1} lies outside the image ({w} x {h})")
        return boxes_mask([args.box], (h, w))
    return None


def _prepare_out(out_dir: Path, overwrite: bool) -> list[Path]:
    """Check --out before any work and create it. Returns the folders this created
    (outermost first), to remove again if the run stops before writing anything."""
    created: list[Path] = []
    try:
        if out_dir.exists() or out_dir.is_symlink():
            if not out_dir.is_dir():
                raise OutputError(f"--out {out_dir} is a file; give a folder (it is created if missing)")
            entries = sorted(os.listdir(out_dir))
            if entries and not overwrite:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise OutputError(
                    f"--out {out_dir} is not empty ({len(entries)} entries: {shown}); give a new or empty folder, "
                    "or add --overwrite to replace the files of the same names there"
                )
        missing = out_dir
        while not missing.exists() and missing != missing.parent:
            created.insert(0, missing)
            missing = missing.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
        probe.touch(exist_ok=False)
        probe.unlink()
        return created
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    except ValueError as exc:  # a NUL byte in the path
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"--out {out_dir!r}: {exc}") from None


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def folder_name(stem: str) -> str:
    """One plain, portable path component for an image's outputs: separators, control and
    ``:*?"<>|`` characters become ``_``; leading and trailing dots and spaces go (so never
    ``.``, ``..`` or a hidden folder); at most 150 bytes of UTF-8; ``image`` if nothing is left."""
    name = _UNSAFE_CHARS.sub("_", stem).strip(" .")
    name = name.encode("utf-8")[:150].decode("utf-8", "ignore").strip(" .")
    return name or "image"


def _image_folder(out_real: Path, stem: str, used: set[str]) -> Path:
    """A folder for this image inside ``out_real`` (already resolved) that no other image of
    this run has (case-insensitively, for case-insensitive file systems) and that is not an
    existing file or link; created."""
    base = folder_name(stem)
    names = (base if n == 1 else f"{base}-{n}" for n in itertools.count(1))
    name = next(n for n in names if n.casefold() not in used and _free(out_real / n))
    folder = out_real / name
    if folder.resolve().parent != out_real:  # cannot happen for a plain name that is not a link
        raise OSError(f"{folder} resolves outside --out")
    used.add(name.casefold())
    folder.mkdir(exist_ok=True)
    return folder


def _free(path: Path) -> bool:
    """Usable as an image's folder: missing, or a real folder (from an earlier run; --overwrite)."""
    return not path.is_symlink() and (path.is_dir() or not path.exists())


def _write_atomic(path: Path, write: Callable[[BinaryIO], None], durable: bool = False) -> None:
    """Write through a temporary file beside ``path``, then rename it over ``path``: an
    interrupted run never leaves a half-written file, and a link at ``path`` is replaced,
    never followed. ``durable``: fsync before the rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def _finite_or_none(obj):
    """The summary with every NaN/inf float replaced by None (null): strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def cmd_explain(args: argparse.Namespace) -> int:
    created: list[Path] = []
    try:
        methods = _method_list(args.methods)
        params = _parse_params(args.param or [], methods)
        out_dir = Path(args.out)
        if args.target not in (None, "auto") and args.target.lower().startswith("top") and args.target.lower() not in ("top1", "top-1"):
            raise TargetError("the CLI explains one class per image: use --target N, a class name, or auto")
        has_gt = args.mask is not None or args.box is not None
        args.metric_names = _metric_list(args.metrics, GROUND_TRUTH + FAITHFULNESS)
        if args.metrics is None and has_gt:
            args.metric_names = list(GROUND_TRUTH)
        needs_gt = [m for m in args.metric_names if m in GROUND_TRUTH]
        if needs_gt and not has_gt:
            raise MethodError(f"--metrics {','.join(needs_gt)} compares the map with a ground truth: give --mask FILE "
                              "or --box X0,Y0,X1,Y1")
        args.mask_array = read_mask(args.mask, what=f"--mask {args.mask}") if args.mask is not None else None
        created = _prepare_out(out_dir, args.overwrite)
        backbone = load_backbone(
            args.backbone, args.device, checkpoint=args.checkpoint, num_classes=args.num_classes, class_names=args.class_names
        )
        for m in methods:
            if (reason := get_method(m).refusal(backbone)) is not None:
                raise MethodError(reason)
        resolve_input_size(args.input_size, backbone.input_size, backbone)  # a bad size fails before any work
        explainer = Explainer(backbone)
        if args.bank:
            explainer.set_bank(PrototypeBank.load(args.bank))
        bank = _default_bank(explainer, methods, params)
    except (*USER_ERRORS, OutputError) as exc:
        _fail(str(exc))
        _remove_empty(created)
        return EXIT_BAD_INPUT
    explainer.warm_up(methods)
    out_real = out_dir.resolve()
    summary = {
        "backbone": backbone.name,
        "weights": backbone.source,
        "device": device_label(backbone.device),
        "layer": explainer.layer_or_default(args.layer),
        "input_size": args.input_size,  # each image's own pixel size is in its record
        # the bank LPCAM reads (a method's own "bank" says when it used the image's pixels instead)
        "bank": bank.describe() if bank is not None else None,
        "normalisation": args.norm,
        "timing": "per method: its own compute on top of the shared forward pass, in-process after a warm-up",
        "images": {},
        "errors": [],
    }
    failed = warned = crashed = 0
    used = {SUMMARY.casefold()}
    for path in args.images:
        try:
            image = load_image(path)
            record = _explain_one(explainer, image, methods, params, args, out_real, used)
            record["source"] = str(path)
            folder = record.pop("folder")
            summary["images"][folder] = record
            for warning in record["warnings"]:
                print(f"warning: {path}: {warning}", file=sys.stderr)
            warned += bool(record["warnings"])
            print(f"{path}: target {record['target']['index']} ({record['target']['name']}), "
                  f"{len(methods)} maps -> {out_dir / folder}")
        except USER_ERRORS as exc:
            failed += 1
            # ImageError messages already start with the file's name.
            _fail(str(exc) if isinstance(exc, ImageError) else f"{path}: {exc}")
            summary["errors"].append({"image": str(path), "error": str(exc)})
        except OSError as exc:  # a write that failed: disk full, permissions, a folder in the way
            failed += 1
            _fail(f"{path}: cannot write its maps: {exc}")
            summary["errors"].append({"image": str(path), "error": f"cannot write its maps: {exc}"})
        except Exception as exc:  # a bug must not cost the rest of the batch
            crashed += 1
            _fail(f"{path}: internal error, please report it: {type(exc).__name__}: {exc}")
            summary["errors"].append({"image": str(path), "error": f"internal error: {type(exc).__name__}: {exc}"})
    text = json.dumps(_finite_or_none(summary), indent=2, allow_nan=False)
    try:
        _write_atomic(out_real / SUMMARY, lambda f: f.write(text.encode("utf-8")), durable=True)
    except OSError as exc:
        _fail(f"cannot write {out_dir / SUMMARY}: {exc}")
        return EXIT_BAD_INPUT
    if crashed:
        return EXIT_INTERNAL_ERROR
    return EXIT_BAD_INPUT if failed or warned else 0


def _default_bank(explainer, methods: list[str], params: dict[str, dict]):
    """The bank the bank-reading methods will use (--bank, else the backbone's dataset bank,
    built now on first use with progress on stderr so that its time is not a method's), or
    None when they read each image's own pixels."""
    if not any(NEEDS_BANK in get_method(m).needs and params.get(m, {}).get("source", "bank") == "bank"
               for m in methods):
        return None
    if explainer.bank is None and explainer.backbone.default_bank is not None:
        source = explainer.backbone.default_bank

        def progress(done, total):
            if sys.stderr.isatty():
                print(f"\r{source.name}: {done}/{total} images", end="" if done < total else "\n", file=sys.stderr)

        bank = explainer.default_bank(progress)
        how = "built and cached" if explainer.stats["bank_builds"] else "loaded from the cache"
        print(f"LPCAM bank: {bank.describe()} ({how})", file=sys.stderr)
        return bank
    return explainer.bank


def _split_bank(explainer, dataset: str, split: str):
    """LPCAM's bank for `evaluate`: the dataset's `split` (cam_core.banks.split_bank), loaded
    from the cache or built and cached there, with its image count on stderr while it builds."""
    from .banks import split_bank

    source = split_bank(dataset, split)

    def progress(done, total):
        if done % 100 == 0 or done == total:
            print(f"{source.name}: {done}/{total} images", file=sys.stderr)

    cached = explainer.dataset_bank(source, progress)
    how = "built and cached" if cached.built else "loaded from the cache"
    print(f"LPCAM bank: {cached.bank.describe()} ({how}: {cached.path})", file=sys.stderr)
    return cached.bank


def _explain_one(explainer, image, methods, params, args, out_real: Path, used: set[str]) -> dict:
    size = args.input_size
    target = explainer.targets(image, None if args.target in (None, "auto") else args.target, size)[0]
    fwd = explainer.forward(image, args.layer, size)
    results = {}
    for m in methods:
        progress = None
        if get_method(m).slow and sys.stderr.isatty():
            def progress(done, total, m=m):
                print(f"\r{m}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
        results[m] = explainer.compute(image, m, target, args.layer, params.get(m), progress=progress, input_size=size)
    warnings = []
    if not bool(torch.isfinite(fwd.logits).all()):
        warnings.append(NOT_FINITE)
    else:
        warnings += [f"{m}: the map has non-finite values (NaN/inf), written as 0"
                     for m, res in results.items() if not bool(torch.isfinite(res.map).all())]
    # metrics before the folder is made: a mask of the wrong size leaves nothing behind
    names = getattr(args, "metric_names", [])
    region = _ground_truth(args, image.size) if any(m in GROUND_TRUTH for m in names) else None
    faith = [m for m in names if m in FAITHFULNESS]
    scores = {}
    for m, res in results.items():
        scores[m] = ground_truth_scores(to_image_map(res.map, image.size, "minmax"), region, names) if region is not None else {}
        if faith:
            progress = None
            if sys.stderr.isatty():
                def progress(metric, done, total, m=m):
                    print(f"\r{m} {metric}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
            scores[m].update({k: round(v, 6) for k, v in faithfulness(
                fwd, res.map, target, faith, score=args.metric_score, progress=progress).items()})
    folder = _image_folder(out_real, image.stem, used)
    record = {
        "folder": folder.name,
        "file": str(image.name),
        "size": list(image.size),
        "notes": list(image.notes),
        "warnings": warnings,
        "input_size": list(fwd.input.shape[-2:]),  # what the model saw; the top-5 are at this size
        "top5": [
            {"index": p.index, "name": p.name, "probability": round(p.probability, 6)}
            for p in top_predictions(fwd.probs, explainer.backbone, 5)
        ],
        "target": {"index": target, "name": explainer.backbone.class_name(target)},
        "forward_ms": round(fwd.forward_ms, 3),
        "gradient_ms": round(fwd.gradient_ms.get(target, 0.0), 3),
        "methods": {},
    }
    for m, res in results.items():
        m01 = to_image_map(res.map, image.size, args.norm)
        png = Image.fromarray(overlay(image.rgb, m01, args.opacity, args.colormap))
        _write_atomic(folder / f"{m}.npy", lambda f, a=m01: np.save(f, a))
        _write_atomic(folder / f"{m}.png", lambda f, im=png: im.save(f, format="PNG"))
        record["methods"][m] = {
            "ms": round(res.ms, 3),
            "label": res.label,
            "layer": res.layer,
            "approximate": res.approximate,
            "grid": list(res.grid),  # the resolution of the features it read
            "note": res.note,
            **({"bank": {"name": res.extras["bank"], "images": res.extras["bank_images"]}}
               if "bank_images" in res.extras else {}),
            "npy": f"{folder.name}/{m}.npy",
            "png": f"{folder.name}/{m}.png",
        }
        if names:
            record["methods"][m]["metrics"] = scores[m]
    return record


def cmd_bank_build(args: argparse.Namespace) -> int:
    try:
        backbone = load_backbone(args.backbone, args.device)
        explainer = Explainer(backbone)
        scan = folder_items(args.folder, backbone.class_names)
        for line in scan.ignored:
            _fail(f"ignored {line}")

        def progress(done, total):
            print(f"\r{done}/{total} images", end="" if done < total else "\n", file=sys.stderr)

        report = build_bank(explainer, scan.items, name=args.name or Path(args.folder).name,
                            max_per_class=args.max_per_class, progress=progress if sys.stderr.isatty() else None)
        for line in report.skipped:
            _fail(f"skipped {line}")
        path = report.bank.save(args.out, tau=args.tau, k=args.k)
    except USER_ERRORS as exc:
        _fail(str(exc))
        return EXIT_BAD_INPUT
    print(f"{report.bank.describe()} -> {path}")
    return EXIT_BAD_INPUT if report.skipped else 0


def cmd_testbed_generate(args: argparse.Namespace) -> int:
    from .testbed.generate import generate

    def progress(done, total):
        if done % 200 == 0 or done == total:
            print(f"{done}/{total} images", file=sys.stderr)

    info = generate(args.out, n=args.n, seed=args.seed, val_fraction=args.val_fraction, progress=progress,
                    version=args.version, heldout_fraction=args.heldout_fraction)
    held = f", {info.heldout} heldout" if info.heldout else ""
    print(f"version {info.version}: {info.n} images ({info.train} train, {info.val} val){held}, seed {info.seed} "
          f"-> {info.root}")
    return 0


def cmd_testbed_train(args: argparse.Namespace) -> int:
    from .testbed.train import TrainError, parse_options, train
    from .voc import DatasetError

    try:
        options = parse_options(args.set or [])
        device = str(resolve_device(args.device))
        card = train(args.data, args.arch, args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     seed=args.seed, device=device, max_steps=args.max_steps,
                     progress=lambda line: print(line, file=sys.stderr), role=args.role, options=options,
                     cls_teacher=args.cls_teacher, loc_teacher=args.loc_teacher)
    except (DatasetError, BackboneError, TrainError) as exc:
        _fail(str(exc))
        return EXIT_BAD_INPUT
    print(f"{args.arch}: val mAP {card['val']['mAP']:.3f}, exact match {card['val']['exact_match']:.3f} "
          f"-> {Path(args.out).with_suffix('.safetensors')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .distributed import EngineError
    from .evaluate import InProcess, RowStore, StoreError, evaluate, reads_bank, rows_path, write_results
    from .voc import DatasetError, VOCDataset

    try:
        methods = _method_list(args.methods)
        params = _parse_params(args.param or [], methods)
        metrics = [m for m in _metric_list(args.metrics, GROUND_TRUTH + FAITHFULNESS) if m in FAITHFULNESS]
        dataset = VOCDataset(args.dataset, args.split)
        engine = InProcess()
        if args.engine == "ray":
            from .distributed import RayEngine

            engine = RayEngine(address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                               gpus_per_worker=args.gpus_per_worker)
        elif any(v is not None for v in (args.address, args.workers, args.gpus_per_worker)):
            raise MethodError("--address, --workers and --gpus-per-worker go with --engine ray")
        explainer = Explainer(load_backbone(args.backbone, args.device))
        bank = None
        if args.bank_from and reads_bank(methods, params):
            VOCDataset(args.dataset, args.bank_from)  # a missing split is an error before any work
            bank = _split_bank(explainer, args.dataset, args.bank_from)
        elif not args.bank_from:  # each image's own pixels, not the backbone's dataset bank
            for m in methods:
                spec = get_method(m)
                if NEEDS_BANK in spec.needs and "source" in {p.name for p in spec.params}:
                    params[m] = spec.resolve_params({**params.get(m, {}), "source": "image"})
        run = {"backbone": explainer.backbone.name, "dataset": str(Path(args.dataset).resolve()), "split": args.split}
        store = RowStore(rows_path(args.out), run, restart=args.restart)
    except (*USER_ERRORS, DatasetError, EngineError, ValueError) as exc:
        _fail(str(exc))
        return EXIT_BAD_INPUT

    def progress(done, total):
        if done % 20 == 0 or done == total:
            print(f"{done}/{total} images", file=sys.stderr)

    rows: list = []
    t0 = time.perf_counter()
    try:
        summaries = evaluate(dataset, explainer, methods, params, bank=bank, limit=args.limit, progress=progress,
                             rows_out=rows, metrics=metrics, metric_score=args.metric_score, engine=engine,
                             store=store)
    except (*USER_ERRORS, StoreError, EngineError, ValueError) as exc:
        _fail(str(getattr(exc, "cause", None) or exc))  # a Ray worker's error: the original one
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _fail(f"interrupted: the rows of finished images are in {rows_path(args.out)}; run the same command "
              "again to resume")
        return EXIT_BAD_INPUT
    except Exception as exc:  # Ray's errors (a cluster that cannot be reached, a worker lost for good)
        if type(exc).__module__.split(".")[0] not in ("ray", "cam_core"):
            raise
        _fail(f"{args.engine} engine: {type(exc).__name__}: {exc}")
        return EXIT_BAD_INPUT
    seconds = time.perf_counter() - t0
    write_results(args.out, summaries, rows)
    keys = ["seed_mIoU", "best_bg_threshold", "fg_precision", "fg_recall", "recall_body", "recall_part",
            "gt_known_loc", "top1_loc", "energy_pointing_game", "pointing_game", "maxboxacc_v2", "pxap",
            *metrics, "seconds_per_image"]
    print(f"{explainer.backbone.name} on {args.dataset} ({args.split}, {summaries[0]['images'] if summaries else 0} "
          f"images, {engine.name} engine, {seconds:.1f} s)")
    print(f"{'method':12s} " + " ".join(f"{k[:11]:>11s}" for k in keys))
    for s in summaries:
        print(f"{s['method']:12s} " + " ".join(f"{s.get(k, float('nan')):11.3f}" for k in keys))
    for s in summaries:
        if s.get("refused_images"):
            first = next(r["refused"] for r in rows if r["method"] == s["method"] and "refused" in r)
            print(f"{s['method']}: declined {s['refused_images']} image(s), scored as empty maps; the first: {first}")
    print(f"-> {args.out}, {Path(args.out).with_suffix('.json')} and {rows_path(args.out)}")
    return 0


def cmd_list(_args: argparse.Namespace) -> int:
    from .backbones import BACKBONES

    print("backbones (offline):")
    for e in BACKBONES.values():
        print(f"  {e.name:24s} {e.description}")
    print("  random:<timm arch>       random initialisation, no download")
    print("  <timm arch>              timm pretrained weights from the hub (needs internet)")
    print("methods:")
    for spec in METHODS.values():
        print(f"  {spec.name:24s} {spec.label}: {spec.description}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr like every other bad input (argparse prints the
    whole usage first); exit code 2 as before. Subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m cam_core", description="CAM Explorer command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="compute CAMs of images by several methods")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--methods", default="cam,gradcam", help="comma-separated, see `list`")
    p.add_argument("--target", default="auto", help="class index, class name, or auto (top-1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--layer", default=None, help="feature layer (module name or 'features'); default per backbone")
    p.add_argument("--input-size", default="default", metavar="SIZE",
                   help="what the model sees: default (the model's own), 2x, 3x, image (the image's own size, "
                        "longer side at most 1024; CNNs) or HxW")
    p.add_argument("--out", required=True, help="folder for the maps and summary.json; must be new or empty")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out: replace the maps and summary of the same names there")
    p.add_argument("--norm", default="minmax", choices=NORMALISATIONS)
    p.add_argument("--opacity", type=_fraction, default=0.5, help="0 (image only) to 1 (map only)")
    p.add_argument("--colormap", default="jet", choices=COLORMAPS)
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE", help="method parameter, repeatable")
    p.add_argument("--checkpoint", default=None, help="local .safetensors/.pth for the timm arch named by --backbone")
    p.add_argument("--num-classes", type=_positive_int, default=None, help="classes of --checkpoint's head")
    p.add_argument("--class-names", default=None, help="text file, one class name per line")
    p.add_argument("--bank", default=None, help="LPCAM prototype bank (.safetensors from `bank build` or the app)")
    gt = p.add_mutually_exclusive_group()
    gt.add_argument("--mask", default=None, metavar="FILE", help="ground-truth mask image (non-zero = object), "
                    "the image's size; enables the ground-truth metrics")
    gt.add_argument("--box", type=_box, default=None, metavar="X0,Y0,X1,Y1",
                    help="ground-truth box in image pixels (inclusive); enables the ground-truth metrics")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help=f"comma-separated, or all: {', '.join(GROUND_TRUTH)} (need --mask/--box), "
                        f"{', '.join(FAITHFULNESS)}; written per method in summary.json")
    p.add_argument("--metric-score", default="softmax", choices=SCORES,
                   help="class score of the faithfulness metrics: softmax (the papers') or the class's sigmoid")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("bank", help="LPCAM prototype banks")
    bank_sub = p.add_subparsers(dest="bank_command", required=True)
    b = bank_sub.add_parser("build", help="build a bank from a folder (ImageFolder layout, or flat = top-1 labels)")
    b.add_argument("folder")
    b.add_argument("--backbone", default="efficientnet_lite0")
    b.add_argument("--device", default="cpu")
    b.add_argument("--out", required=True, help="file to write (.safetensors)")
    b.add_argument("--name", default=None)
    b.add_argument("--max-per-class", type=_positive_int, default=20_000, help="pixel features kept per class")
    b.add_argument("--tau", type=_fraction, default=0.1, help="recorded as the bank's default tau")
    b.add_argument("--k", type=_positive_int, default=12, help="recorded as the bank's default K")
    b.set_defaults(func=cmd_bank_build)

    p = sub.add_parser("testbed", help="the generated ground-truth set and its models")
    tb = p.add_subparsers(dest="testbed_command", required=True)
    g = tb.add_parser("generate", help="write a VOC-layout set with planted failure modes")
    g.add_argument("--out", required=True)
    g.add_argument("--n", type=_positive_int, default=1200)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--version", type=int, choices=(1, 2), default=1,
                   help="1: the failures planted softly (reproducible as shipped); 2: planted hard, with a heldout split")
    g.add_argument("--heldout-fraction", type=float, default=0.2,
                   help="version 2: heldout images (backgrounds flipped), as a fraction of --n")
    g.set_defaults(func=cmd_testbed_generate)
    t = tb.add_parser("train", help="train a small CNN, a ViT with a TS-CAM head, CI-CAM or KD-CI-CAM on "
                                    "image-level labels")
    t.add_argument("--arch", choices=("cnn", "vit", "ci-cam", "kd-ci-cam"), required=True)
    t.add_argument("--role", choices=("cls", "loc"), default="loc",
                   help="ci-cam: the official classification or localisation teacher's settings")
    t.add_argument("--cls-teacher", default=None, help="kd-ci-cam: PREFIX of a ci-cam trained with --role cls")
    t.add_argument("--loc-teacher", default=None, help="kd-ci-cam: PREFIX of a ci-cam trained with --role loc")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="ci-cam: crop_min_scale, aux_type, aux_rate, seg_thr, spa_rate, update_rate, function; "
                        "kd-ci-cam: alpha, cls_temperature, loc_temperature, loc_weight, loc_kind (mse, smoothl1, l1), "
                        "official_kl, cls_min_scale, loc_min_scale, update_rate")
    t.add_argument("--data", required=True, help="a testbed (or any VOC-layout folder with labels.txt)")
    t.add_argument("--out", required=True, help="path prefix: writes PREFIX.safetensors and PREFIX.json")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="cpu, cuda or auto (the GPU when there is one)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    t.set_defaults(func=cmd_testbed_train)

    p = sub.add_parser("evaluate", help="score methods against the masks and boxes of a VOC-layout folder")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--backbone", required=True)
    p.add_argument("--methods", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="results CSV (a JSON of the totals is written beside it)")
    p.add_argument("--limit", type=_positive_int, default=None, help="first N images only")
    p.add_argument("--bank-from", default="train", help="split whose images build LPCAM's bank ('' = each image's own)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help=f"faithfulness columns, comma-separated or all: {', '.join(FAITHFULNESS)} "
                        "(of the top-1 class's map; the ground-truth metrics are always computed)")
    p.add_argument("--metric-score", default="softmax", choices=SCORES,
                   help="class score of the faithfulness metrics: softmax, or sigmoid for multi-label heads")
    p.add_argument("--engine", default="inprocess", choices=("inprocess", "ray"),
                   help="inprocess: here, one image after the other; ray: Ray actors (pip install -r requirements-ray.txt)")
    p.add_argument("--address", default=None, help="Ray cluster to join (HOST:PORT or auto); default: start a local Ray")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="Ray actors, each holding the model (default: one per GPU, else one per --cpus-per-worker CPUs)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (and torch threads) of each Ray actor")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPU share of each Ray actor (default 1 when the cluster has GPUs; 0.5 = two per GPU)")
    p.add_argument("--restart", action="store_true",
                   help="discard the rows an earlier run left beside --out (default: resume from them)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("list", help="list backbones and methods")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
