"""The evaluation on a local two-worker Ray gives the in-process run's rows, and resumes from
rows either engine wrote. Ray is the optional extra in requirements-ray.txt (scripts/setup.sh
dev installs it)."""

import dataclasses
import json
import os

import pytest

ray = pytest.importorskip("ray")

from cam_core import Explainer, load_backbone  # noqa: E402
from cam_core.cli import main  # noqa: E402
from cam_core.distributed import RayEngine  # noqa: E402
from cam_core.evaluate import EvalJob, RowStore, evaluate, rows_path  # noqa: E402
from cam_core.testbed.generate import generate  # noqa: E402
from cam_core.voc import VOCDataset  # noqa: E402

METHODS = ["cam", "gradcampp"]
METRICS = ["average_drop", "increase"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module: the engine joins it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb") / "testbed"
    generate(root, n=10, seed=9)
    return root


class Counting:
    """Wraps an engine and records the images it computed."""

    def __init__(self, engine):
        self.engine, self.name, self.computed = engine, engine.name, []

    def run(self, explainer, job, todo):
        for sample_id, rows in self.engine.run(explainer, job, todo):
            self.computed.append(sample_id)
            yield sample_id, rows


def _same_rows(a, b):
    """Equal rows: strings and integers exactly, floats to 1e-6 (the actors run torch with one
    thread, this process with two: float sums may round differently)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            if k not in ("seconds", "metric_seconds", "seconds_per_image"):
                _same_rows(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_rows(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-6, nan_ok=True)
    else:
        assert a == b


@pytest.mark.slow
def test_ray_gives_the_in_process_rows_and_resumes_either_way(local_ray, testbed, tmp_path):
    ds = VOCDataset(testbed, "train")
    explainer = Explainer(load_backbone("testbed-cnn"))
    here_rows, ray_rows = [], []
    here = evaluate(ds, explainer, METHODS, limit=6, rows_out=here_rows, metrics=METRICS)
    engine = Counting(RayEngine(workers=2))
    there = evaluate(ds, Explainer(load_backbone("testbed-cnn")), METHODS, limit=6, rows_out=ray_rows,
                     metrics=METRICS, engine=engine)
    assert sorted(engine.computed) == sorted(s.id for s in list(ds)[:6])
    info = engine.engine.actors_info
    assert len(info) == 2 and len({i["pid"] for i in info}) == 2 and os.getpid() not in {i["pid"] for i in info}
    assert [(r["image"], r["method"]) for r in ray_rows] == [(r["image"], r["method"]) for r in here_rows]
    _same_rows(ray_rows, here_rows)
    _same_rows(json.loads(json.dumps(there)), json.loads(json.dumps(here)))

    # resume: 3 images in-process, the rest on Ray, the same rows file
    run = {"backbone": "testbed-cnn", "dataset": str(testbed), "split": "train"}
    path = tmp_path / "r.rows.jsonl"
    evaluate(ds, explainer, METHODS, limit=3, metrics=METRICS, store=RowStore(path, run))
    engine = Counting(RayEngine(workers=2))
    resumed_rows = []
    evaluate(ds, explainer, METHODS, limit=6, rows_out=resumed_rows, metrics=METRICS,
             store=RowStore(path, run), engine=engine)
    assert sorted(engine.computed) == sorted(s.id for s in list(ds)[3:6])
    _same_rows(resumed_rows, here_rows)


@pytest.mark.slow
def test_evaluate_cli_with_the_ray_engine(local_ray, testbed, tmp_path, capsys):
    out = tmp_path / "res.csv"
    args = ["evaluate", "--dataset", str(testbed), "--split", "train", "--backbone", "testbed-cnn",
            "--methods", "cam", "--out", str(out), "--limit", "4"]
    assert main([*args, "--engine", "ray", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ray engine" in printed
    lines = rows_path(out).read_text().splitlines()
    assert len(lines) == 1 + 4
    ray_csv = out.read_text()
    # in-process on the same --out: everything is already there
    assert main(args) == 0
    assert [line.split(",")[:5] for line in out.read_text().splitlines()] == \
        [line.split(",")[:5] for line in ray_csv.splitlines()]
    assert len(rows_path(out).read_text().splitlines()) == 1 + 4


@dataclasses.dataclass
class DyingJob(EvalJob):
    """Kills its worker process on the first image it is given (once, across workers)."""

    marker: str = ""

    def __call__(self, explainer, sample, methods):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(explainer, sample, methods)


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_its_image_sent_again(local_ray, testbed, tmp_path):
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ds = VOCDataset(testbed, "train")
    explainer = Explainer(load_backbone("testbed-cnn"))
    samples = list(ds)[:3]
    engine = RayEngine(workers=2)
    job = DyingJob(marker=str(tmp_path / "died"))
    done = dict(engine.run(explainer, job, [(s, ["cam"]) for s in samples]))
    assert (tmp_path / "died").exists()
    assert sorted(done) == sorted(s.id for s in samples)
    assert all(rows[0]["method"] == "cam" for rows in done.values())
