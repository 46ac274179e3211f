"""The evaluation's per-image function, its rows file, resumption, and the CLI's new columns."""

import csv
import json

import pytest

from cam_core import Explainer, load_backbone
from cam_core.cli import main
from cam_core.evaluate import (InProcess, RowStore, StoreError, evaluate, evaluate_image, method_params,
                               rows_path)
from cam_core.testbed.generate import generate
from cam_core.voc import VOCDataset

RUN = {"backbone": "testbed-cnn", "dataset": "tb", "split": "train"}


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb") / "testbed"
    generate(root, n=8, seed=3)
    return root


@pytest.fixture(scope="module")
def explainer():
    return Explainer(load_backbone("testbed-cnn"))


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "metric_seconds")} for r in rows]


def _totals(summaries):
    """Comparable totals: without timing, as JSON text (per-class IoU may be NaN, and NaN != NaN)."""
    return json.dumps([{k: v for k, v in s.items() if k != "seconds_per_image"} for s in summaries])


class CountingEngine(InProcess):
    """In-process, counting the images it computes, optionally stopping after `stop` of them."""

    def __init__(self, stop=None):
        self.computed, self.stop = [], stop

    def run(self, explainer, job, todo):
        for sample_id, rows in super().run(explainer, job, todo):
            self.computed.append(sample_id)
            yield sample_id, rows
            if self.stop is not None and len(self.computed) >= self.stop:
                raise KeyboardInterrupt


def test_rows_are_json_and_an_in_memory_sample_gives_the_same_rows(testbed, explainer):
    sample = VOCDataset(testbed, "train")[0]
    rows = evaluate_image(explainer, sample, ["cam", "gradcampp"], metrics=["average_drop", "increase"])
    assert [r["method"] for r in rows] == ["cam", "gradcampp"]
    deletion = evaluate_image(explainer, sample, ["cam"], metrics=["deletion"])[0]
    assert 0 <= deletion["deletion"] <= 1 and "insertion" not in deletion and deletion["metric_score"] == "softmax"
    again = json.loads(json.dumps(rows))
    assert again == rows
    r = rows[0]
    assert r["image"] == sample.id and r["params"] == {} and 0 <= r["average_drop"] <= 1 and r["increase"] in (0, 1)
    assert len(r["stats"]["box_ious"]) == len([c for c in sample.labels if sample.boxes(c)])
    assert all(len(v) == 100 for v in r["stats"]["box_ious"]) and len(r["stats"]["px_true"]) == 102
    assert _strip(evaluate_image(explainer, sample.load(), ["cam", "gradcampp"],
                                 metrics=["average_drop", "increase"])) == _strip(rows)


def test_method_params_hold_defaults_and_the_bank():
    assert method_params("scorecam", {"batch_size": 8}) == {"batch_size": 8, "score": "softmax"}
    assert method_params("lpcam", None)["bank"] == "image"


def test_a_stopped_run_resumes_without_recomputing(testbed, explainer, tmp_path):
    ds = VOCDataset(testbed, "train")
    full_rows, partial_rows = [], []
    full = evaluate(ds, explainer, ["cam"], limit=5, rows_out=full_rows, metrics=["increase"])
    store = RowStore(tmp_path / "r.rows.jsonl", RUN)
    with pytest.raises(KeyboardInterrupt):
        evaluate(ds, explainer, ["cam"], limit=5, metrics=["increase"], store=store, engine=CountingEngine(stop=2))
    lines = (tmp_path / "r.rows.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 2 and json.loads(lines[0]) == {"run": RUN}
    engine = CountingEngine()
    seen = []
    resumed = evaluate(ds, explainer, ["cam"], limit=5, rows_out=partial_rows, metrics=["increase"],
                       store=RowStore(tmp_path / "r.rows.jsonl", RUN), engine=engine,
                       progress=lambda d, t: seen.append(d))
    assert engine.computed == [s.id for s in list(ds)[2:5]]  # only the three not done
    assert seen == [2, 3, 4, 5]
    assert _totals(resumed) == _totals(full) and _strip(partial_rows) == _strip(full_rows)
    # a third run computes nothing; asking for another method computes only that method
    engine = CountingEngine()
    evaluate(ds, explainer, ["cam"], limit=5, metrics=["increase"], store=RowStore(tmp_path / "r.rows.jsonl", RUN),
             engine=engine)
    assert engine.computed == []
    rows = []
    evaluate(ds, explainer, ["cam", "gradcam"], limit=5, metrics=["increase"], rows_out=rows,
             store=RowStore(tmp_path / "r.rows.jsonl", RUN), engine=engine)
    assert len(engine.computed) == 5
    assert {json.loads(x)["method"] for x in (tmp_path / "r.rows.jsonl").read_text().splitlines()[1:]} == {"cam", "gradcam"}
    assert [r["method"] for r in rows] == ["cam", "gradcam"] * 5  # dataset order, methods in order


def test_rows_of_other_parameters_or_metrics_are_recomputed(testbed, explainer, tmp_path):
    ds = VOCDataset(testbed, "train")
    path = tmp_path / "r.rows.jsonl"
    evaluate(ds, explainer, ["gradcampp"], limit=2, store=RowStore(path, RUN))
    engine = CountingEngine()
    evaluate(ds, explainer, ["gradcampp"], limit=2, metrics=["average_drop"], store=RowStore(path, RUN), engine=engine)
    assert len(engine.computed) == 2  # the stored rows lack the metric
    engine = CountingEngine()
    evaluate(ds, explainer, ["gradcampp"], limit=2, metrics=["average_drop"], metric_score="sigmoid",
             store=RowStore(path, RUN), engine=engine)
    assert len(engine.computed) == 2  # another class score
    engine = CountingEngine()
    evaluate(ds, explainer, ["gradcampp"], limit=2, metrics=["average_drop"], metric_score="sigmoid",
             store=RowStore(path, RUN), engine=engine)
    assert engine.computed == []


def test_a_cut_line_is_dropped_and_another_runs_file_is_refused(testbed, explainer, tmp_path):
    ds = VOCDataset(testbed, "train")
    path = tmp_path / "r.rows.jsonl"
    evaluate(ds, explainer, ["cam"], limit=2, store=RowStore(path, RUN))
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:40])  # a crash in the middle of a write
    assert len(RowStore(path, RUN).load()) == 2
    assert path.read_text() == text  # truncated back to the last whole line
    with pytest.raises(StoreError, match="another run"):
        RowStore(path, {**RUN, "split": "val"}).load()
    assert RowStore(path, {**RUN, "split": "val"}, restart=True).load() == {}
    assert path.read_text().count("\n") == 1
    path.write_text(text.replace('"image"', "{{", 1) + text.splitlines()[-1] + "\n")
    with pytest.raises(StoreError, match="line 2 is not JSON"):
        RowStore(path, RUN).load()


def test_evaluate_cli_metrics_columns_and_resume(testbed, tmp_path, capsys):
    out = tmp_path / "res.csv"
    args = ["evaluate", "--dataset", str(testbed), "--split", "train", "--backbone", "testbed-cnn", "--methods",
            "cam", "--out", str(out), "--limit", "2", "--metrics", "average_drop,increase"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "average_dro" in printed and "increase" in printed and "pointing_ga" in printed
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["image", "method", "classes", "top1", "mIoU_at_best_t"]
    assert {"average_drop", "increase", "pointing_game", "maxboxacc_v2", "pxap"} <= set(rows[0])
    assert not {"deletion", "insertion", "road"} & set(rows[0])  # only the columns asked for
    total = rows[-1]
    assert total["image"] == "TOTAL" and 0 <= float(total["increase"]) <= 1
    assert float(total["average_drop"]) == pytest.approx((float(rows[0]["average_drop"]) + float(rows[1]["average_drop"])) / 2, abs=1e-4)
    assert rows_path(out).exists() and len(rows_path(out).read_text().splitlines()) == 3
    totals = json.loads(out.with_suffix(".json").read_text())
    assert set(totals[0]["maxboxacc_v2_by_iou"]) == {"30", "50", "70"}
    before = out.read_text()
    # the same command again: every row comes from the rows file
    assert main(args) == 0
    assert "2/2 images" in capsys.readouterr().err
    assert [line.split(",")[:5] for line in out.read_text().splitlines()] == \
        [line.split(",")[:5] for line in before.splitlines()]
    # another dataset split with the same --out is refused with one line
    assert main([*args[:4], "val", *args[5:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another run" in err[0] and "--restart" in err[0]
    assert main([*args[:4], "val", *args[5:], "--restart"]) == 0


@pytest.mark.parametrize("extra,msg", [
    (["--metrics", "nosuch"], "unknown metric 'nosuch'"),
    (["--workers", "2"], "go with --engine ray"),
])
def test_evaluate_cli_bad_metric_arguments(testbed, tmp_path, capsys, extra, msg):
    rc = main(["evaluate", "--dataset", str(testbed), "--backbone", "testbed-cnn", "--methods", "cam",
               "--out", str(tmp_path / "r.csv"), *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_an_image_the_method_declines_scores_as_an_empty_map_and_the_run_goes_on(testbed, explainer):
    """LPCAM on an image's own pixels refuses a class with fewer foreground pixels than K: that
    image is scored with empty maps (everything predicted background), the row says why, the
    totals count it, and the other images are evaluated as usual."""
    from cam_core.errors import MethodError
    from cam_core.kmeans import KMeansError
    from cam_core.prototypes import BankError

    params = {"lpcam": {"source": "image", "multiscale": False, "k": 60}}
    ds = VOCDataset(testbed, "train")
    expected = {}
    for s in ds:
        if not s.labels:
            continue
        top1 = int(explainer.forward(s.image()).probs.argmax())
        try:
            for c in sorted(set(s.labels) | {top1}):
                explainer.compute(s.image(), "lpcam", c, params=params["lpcam"])
            expected[s.id] = False
        except (MethodError, BankError, KMeansError):
            expected[s.id] = True
    assert 0 < sum(expected.values()) < len(expected)  # the planted case: some images refused, some not
    rows = []
    (summary,) = evaluate(ds, explainer, ["lpcam"], params=params, rows_out=rows, keep_stats=True)
    assert summary["images"] == len(expected)
    assert summary["refused_images"] == sum(expected.values())
    for r in rows:
        assert ("refused" in r) == expected[r["image"]]
        if "refused" in r:
            assert "larger than" in r["refused"]
            assert all(p == 0 for conf in r["stats"]["conf"] for _, p, _ in conf)  # all predicted background
    (plain,) = evaluate(ds, explainer, ["lpcam"], params={"lpcam": {**params["lpcam"], "k": 5}})
    assert "refused_images" not in plain
