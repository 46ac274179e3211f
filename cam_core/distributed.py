"""The evaluation on a Ray cluster (an optional extra: ``pip install -r requirements-ray.txt``).

Ray schedules; cam_core computes. :class:`RayEngine` has the interface of
``evaluate.InProcess``: ``run(explainer, job, todo)`` yields ``(image id, rows)`` as images
finish, and each row comes from the very function the in-process run calls,
``evaluate.evaluate_image``, inside an actor:

* **Actors hold the model.** The driver's backbone (a CPU copy) and the job (methods'
  parameters, metrics, LPCAM's bank) are put in Ray's object store once; each actor builds an
  Explainer from them and keeps it (and its caches) for the whole run. An actor asks for
  ``cpus_per_worker`` CPUs (and sets torch's threads to match) and, when the cluster has
  GPUs, a share of one (``gpus_per_worker``, 1 by default; 0.5 puts two actors on a GPU),
  and then runs on ``cuda``. Workers need the same Python packages as the driver; when
  joining a cluster the driver's ``cam_core`` is shipped with the job (``py_modules``).
* **Images are streamed.** The driver reads each sample into memory
  (``VOCSample.load()``: image bytes, masks, boxes — workers need no shared disk) only when
  an actor has room: at most ``in_flight`` images per actor are queued, so a run over 50,000
  images never holds them all. Results come back as they finish, in any order.
* **Rows are gathered by the driver**, which appends them to the run's RowStore and builds
  the totals in dataset order, exactly as the in-process run does; so the CSV is the same,
  and a stopped run resumes from the stored rows whichever engine wrote them.
* A worker that dies is replaced by a new actor and its images are sent again (twice at
  most): an image's work is a pure function of its inputs.

With no address a local Ray is started (and stopped at the end); with one the driver joins
that cluster (``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the
others, then ``--address HEAD:6379`` here, or ``auto`` on a cluster node).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .engine import Explainer


class EngineError(RuntimeError):
    """Ray is missing or the cluster cannot be used; the message is meant for the user."""


def _ray():
    try:
        import ray
    except ImportError:
        raise EngineError("--engine ray needs Ray: pip install -r requirements-ray.txt") from None
    return ray


def _portable(backbone):
    """The backbone as workers can unpickle it anywhere: its model on the CPU."""
    if backbone.device.type == "cpu":
        return backbone
    import copy

    model = copy.deepcopy(backbone.model).to("cpu")
    return dataclasses.replace(backbone, model=model, device=torch.device("cpu"))


class EvalWorker:
    """A Ray actor: one Explainer (one model) for the whole run; run() is evaluate_image."""

    def __init__(self, refs: list, threads: float = 1):
        import ray

        # The backbone and the job come as object refs inside a list, fetched here: the
        # driver keeps them alive for the run, so a restarted actor finds them again.
        backbone, job = ray.get(refs)
        torch.set_num_threads(max(1, int(threads)))
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.explainer = Explainer(backbone.to(device))
        self.job = job

    def run(self, sample, methods: list[str]) -> tuple[str, list[dict]]:
        return sample.id, self.job(self.explainer, sample, methods)

    def info(self) -> dict:
        return {"pid": os.getpid(), "device": str(self.explainer.backbone.device), "threads": torch.get_num_threads()}


class RayEngine:
    """Runs evaluate_image on Ray actors (see the module docstring).

    address: None starts a local Ray (``num_cpus`` = at least workers x cpus_per_worker);
    an address joins that cluster. workers: how many actors (default: one per GPU when the
    cluster has GPUs, else one per ``cpus_per_worker`` CPUs). ``init_kwargs`` go to ray.init."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, in_flight: int = 2, init_kwargs: dict | None = None):
        _ray()  # refuse up front when Ray is not installed
        if workers is not None and workers < 1:
            raise EngineError(f"workers must be at least 1, got {workers}")
        if cpus_per_worker <= 0:
            raise EngineError(f"cpus per worker must be positive, got {cpus_per_worker}")
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.in_flight = max(1, int(in_flight))
        self.retries = 2  # times an image is sent again after its worker died
        self.init_kwargs = dict(init_kwargs or {})
        self.actors_info: list[dict] = []

    def _init(self, ray) -> bool:
        """Start or join Ray; True when this call started it (and must stop it)."""
        if ray.is_initialized():
            return False
        kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
        try:
            if self.address:
                import cam_core

                env = kwargs.pop("runtime_env", {}) or {}
                env.setdefault("py_modules", [str(Path(cam_core.__file__).parent)])
                kwargs.pop("include_dashboard")
                ray.init(address=self.address, runtime_env=env, **kwargs)
            else:
                need = (self.workers or 1) * self.cpus_per_worker
                kwargs.setdefault("num_cpus", max(os.cpu_count() or 1, int(-(-need // 1))))
                ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(f"cannot {'join Ray at ' + self.address if self.address else 'start a local Ray'}: "
                              f"{exc}") from None
        return True

    def _plan(self, ray) -> tuple[int, float]:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        gpw = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if self.workers:
            n = self.workers
        elif gpw:
            n = max(1, int(gpus / gpw))
        else:
            n = max(1, int(float(resources.get("CPU", 1)) // self.cpus_per_worker))
        return n, gpw

    def run(self, explainer: Explainer, job, todo: Iterable[tuple[object, list[str]]]
            ) -> Iterator[tuple[str, list[dict]]]:
        todo = iter(todo)
        first = next(todo, None)
        if first is None:
            return
        ray = _ray()
        started = self._init(ray)
        actors = []
        self.actors_info = []
        try:
            n, gpw = self._plan(ray)
            if job.bank is None and explainer.bank is not None:
                job = dataclasses.replace(job, bank=explainer.bank)
            worker = ray.remote(EvalWorker).options(num_cpus=self.cpus_per_worker, num_gpus=gpw)
            refs = [ray.put(_portable(explainer.backbone)), ray.put(job)]
            actors = [worker.remote(refs, self.cpus_per_worker) for _ in range(n)]
            queue = _chain(first, todo)
            pending: dict = {}  # result ref -> (actor slot, item, attempts)

            def submit(slot: int, item=None, attempts: int = 0) -> None:
                item = item if item is not None else next(queue, None)
                if item is None:
                    return
                sample, methods = item
                data = sample.load() if hasattr(sample, "load") else sample
                pending[actors[slot].run.remote(data, list(methods))] = (slot, (data, methods), attempts)

            for _ in range(self.in_flight):
                for slot in range(n):
                    submit(slot)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                slot, item, attempts = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayActorError:
                    # the worker died (its node lost, out of memory): a new one takes its images
                    if attempts >= self.retries:
                        raise
                    if actors[slot] is not None and _dead(ray, actors[slot]):
                        actors[slot] = worker.remote(refs, self.cpus_per_worker)
                    submit(slot, item, attempts + 1)
                    continue
                submit(slot)
                yield result
            self.actors_info = ray.get([a.info.remote() for a in actors])
        finally:
            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            if started:
                ray.shutdown()


def _dead(ray, actor) -> bool:
    try:
        ray.get(actor.info.remote(), timeout=30)
        return False
    except Exception:  # noqa: BLE001 - any failure to answer: replace it
        return True


def _chain(first, rest):
    yield first
    yield from rest
