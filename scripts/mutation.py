#!/usr/bin/env python
"""Mutation testing of cam_core with mutmut: the score per module, and the survivors.

    .venv/bin/python scripts/mutation.py metrics render      # some modules
    .venv/bin/python scripts/mutation.py all                 # every module in MODULES (slow: hours)
    .venv/bin/python scripts/mutation.py --list              # the modules and their tests

Each module runs in its own scratch copy of the repository (.mutation/<module>/, git-ignored):
cam_core/, tests/, the assets the tests read, and a pyproject.toml holding only the
[tool.mutmut] section made for that module (which file to mutate, which fast test files to
run). mutmut copies the copy into mutants/, rewrites the module so that every mutant can
be switched on at run time, and puts mutants/ first on sys.path: the tests import THAT
cam_core, not the checkout the editable install points at (mutmut's own forced-failure
run checks it; the script also refuses a run in which no mutant was killed). Per function,
only the tests that call it are run against its mutants, fastest first, in processes forked
from a fork server (torch is not fork-safe once it has run).

The score counts non-equivalent mutants: killed / (all - equivalent). A mutant is
equivalent when no test can tell it from the original (same behaviour, e.g. a tolerance
that no input reaches); each is listed, with the reason, in tests/mutation_equivalents.txt:

    cam_core.metrics.x_iou__mutmut_3 | <the mutated line as `mutmut show` prints it> | reason

The line is checked against the mutant: when the code changes and mutmut renumbers, a
stale entry is reported rather than silently excusing another mutant. Survivors that are
not listed are printed with their diff; kill them with a test, or list them with the reason.

Exit code: 0 when every module reaches --goal (85 %), 1 otherwise, 2 on a broken run.

Run times on the 2-core development CPU (shared, --max-children 1): metrics 0.5 min (30
mutants), render 4 min (505), kmeans 6.5 min (265), methods/gradient 26 min (96: its tests run
real models and the pytorch-grad-cam parity checks). Modules whose tests run models (engine,
prototypes, scorecam, lpcam, sipe) cost ~10-20 s a mutant, and a survivor runs every test
that reaches it: the whole list is an estimated 5-10 hours. Run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"
MUTMUT_VERSION = "3.8.1"  # pinned in requirements-dev.txt
FAST = ["-m", "not slow and not browser"]

# module (path under cam_core/, without .py) -> the fast test files that exercise it
MODULES: dict[str, list[str]] = {
    "metrics": ["tests/test_metrics.py", "tests/test_metrics_gt.py", "tests/test_faithfulness.py"],
    "render": ["tests/test_render.py"],
    "kmeans": ["tests/test_kmeans.py"],
    "images": ["tests/test_images.py", "tests/test_working_image.py"],
    "prototypes": ["tests/test_prototypes.py"],
    "engine": ["tests/test_methods.py", "tests/test_concurrency.py", "tests/test_prototypes.py"],
    "methods/base": ["tests/test_methods.py"],
    "methods/activation": ["tests/test_methods.py"],
    "methods/gradient": ["tests/test_methods.py"],
    "methods/scorecam": ["tests/test_methods.py", "tests/test_concurrency.py"],
    "methods/attention": ["tests/test_testbed.py"],
    "methods/lpcam": ["tests/test_prototypes.py", "tests/test_banks.py"],
    "methods/sipe": ["tests/test_prototypes.py"],
    "methods/cicam": ["tests/test_cicam.py"],
    "backbones/folding": ["tests/test_folding.py", "tests/test_methods.py"],
}
# what the tests read or import besides cam_core/ and tests/: sample images, the shipped testbed
# models, and ui/ (tests of the registry's page-facing text import ui.common; without it
# mutmut's first, unmutated run fails and it stops with "failed to collect stats")
ASSETS = ["assets/samples", "assets/testbed", "ui"]

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests", "suspicious"}


@dataclass
class Equivalent:
    name: str
    line: str
    reason: str


@dataclass
class ModuleResult:
    module: str
    seconds: float
    status: dict[str, str]  # mutant -> mutmut status
    diffs: dict[str, str] = field(default_factory=dict)  # survivor -> diff
    equivalent: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # equivalents whose line no longer matches

    @property
    def killed(self) -> int:
        return sum(s in KILLED for s in self.status.values())

    @property
    def unexplained(self) -> list[str]:
        return sorted(n for n, s in self.status.items() if s in SURVIVED and n not in self.equivalent)

    @property
    def other(self) -> list[str]:
        return sorted(n for n, s in self.status.items() if s not in KILLED | SURVIVED)

    @property
    def counted(self) -> int:
        return len(self.status) - len(self.equivalent) - len(self.other)

    @property
    def score(self) -> float:
        return self.killed / self.counted if self.counted else 1.0


def die(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, Equivalent]:
    out = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(" | ", 1)
        if len(parts) != 2 or " | " not in parts[1]:
            die(f"{path.name}:{n}: expected 'mutant | mutated line | reason', got {raw!r}")
        line, reason = parts[1].rsplit(" | ", 1)
        out[parts[0].strip()] = Equivalent(parts[0].strip(), line.strip(), reason.strip())
    return out


def mutated_line(diff: str) -> str:
    """The first added line of a mutant's diff, stripped: what an equivalents entry names."""
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            return line[1:].strip()
    return ""


def mutmut_exe() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    try:
        from importlib.metadata import version

        installed = version("mutmut")
    except Exception:
        installed = None
    if installed != MUTMUT_VERSION:
        print(f"installing mutmut=={MUTMUT_VERSION} into {Path(sys.executable).parents[1]}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"mutmut=={MUTMUT_VERSION}"], check=True)
    return str(exe)


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def prepare(module: str, tests: list[str]) -> Path:
    work = WORK / module.replace("/", ".")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "cam_core", work / "cam_core", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    for asset in ASSETS:
        if (ROOT / asset).exists():
            shutil.copytree(ROOT / asset, work / asset, ignore=ignore)
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["cam_core"]\n'
        f'only_mutate = ["cam_core/{module}.py"]\n'
        f"also_copy = {toml_list(ASSETS)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(tests + FAST)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
    )
    return work


def run_module(module: str, tests: list[str], equivalents: dict[str, Equivalent], max_children: int,
               verbose: bool) -> ModuleResult:
    exe = mutmut_exe()
    work = prepare(module, tests)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}  # the copy's cam_core only
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "run", "--max-children", str(max_children)], cwd=work, env=env,
                          capture_output=not verbose, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        if not verbose:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        if (work / "mutants").is_dir():  # mutmut hides pytest's output: run the unmutated tests once to show it
            check = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests, *FAST],
                                   cwd=work / "mutants", env=env, capture_output=True, text=True)
            print(f"the unmutated copy's tests: exit {check.returncode}\n{check.stdout[-3000:]}", file=sys.stderr)
        die(f"mutmut run failed on {module} (exit {proc.returncode}); see above")
    listing = subprocess.run([exe, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True,
                             check=True).stdout
    status = {}
    for line in listing.splitlines():
        m = re.match(r"\s+(\S+__mutmut_\d+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    result = ModuleResult(module, seconds, status)
    if status and result.killed == 0:
        die(f"{module}: no mutant was killed: the tests did not run against the mutated copy")
    for name, st in status.items():
        if st not in SURVIVED:
            continue
        diff = subprocess.run([exe, "show", name], cwd=work, env=env, capture_output=True, text=True).stdout
        result.diffs[name] = diff
        eq = equivalents.get(name)
        if eq is None:
            continue
        if eq.line == mutated_line(diff):
            result.equivalent.append(name)
        else:
            result.stale.append(name)
    return result


def report(results: list[ModuleResult], equivalents: dict[str, Equivalent], goal: float) -> int:
    print()
    print(f"{'module':22s} {'mutants':>7s} {'killed':>6s} {'equiv':>5s} {'survived':>8s} {'other':>5s} "
          f"{'score':>6s} {'time':>7s}")
    for r in results:
        print(f"{r.module:22s} {len(r.status):7d} {r.killed:6d} {len(r.equivalent):5d} {len(r.unexplained):8d} "
              f"{len(r.other):5d} {r.score:6.1%} {r.seconds / 60:6.1f}m")
    killed = sum(r.killed for r in results)
    counted = sum(r.counted for r in results)
    overall = killed / counted if counted else 1.0
    print(f"{'overall':22s} {sum(len(r.status) for r in results):7d} {killed:6d} "
          f"{sum(len(r.equivalent) for r in results):5d} {sum(len(r.unexplained) for r in results):8d} "
          f"{sum(len(r.other) for r in results):5d} {overall:6.1%} {sum(r.seconds for r in results) / 60:6.1f}m")
    print("score = killed / (mutants - equivalent - other); 'other' = not checked or skipped by mutmut")
    for r in results:
        for name in r.unexplained:
            print(f"\nSURVIVED ({r.status[name]}) {name}\n{r.diffs.get(name, '').rstrip()}")
        for name in r.stale:
            print(f"\nSTALE equivalent entry {name}: listed line {equivalents[name].line!r}, "
                  f"the mutant now changes {mutated_line(r.diffs[name])!r}")
        for name in r.other:
            print(f"\n{r.status[name].upper()} {name}")
    return 0 if all(r.score >= goal for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("modules", nargs="*", help=f"any of {', '.join(MODULES)}, or 'all'")
    p.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel (default 2)")
    p.add_argument("--goal", type=float, default=0.85, help="the score every module must reach (default 0.85)")
    p.add_argument("--list", action="store_true", help="print the modules and their test files, then stop")
    p.add_argument("-v", "--verbose", action="store_true", help="show mutmut's own output")
    args = p.parse_args(argv)
    if args.list or not args.modules:
        for module, tests in MODULES.items():
            print(f"{module:22s} {' '.join(tests)}")
        return 0
    modules = list(MODULES) if args.modules == ["all"] else args.modules
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    equivalents = load_equivalents()
    results = []
    for module in modules:
        print(f"== {module}: mutating cam_core/{module}.py, tests {' '.join(MODULES[module])}", flush=True)
        results.append(run_module(module, MODULES[module], equivalents, args.max_children, args.verbose))
        r = results[-1]
        print(f"   {len(r.status)} mutants, {r.killed} killed, {r.score:.1%} in {r.seconds / 60:.1f} min", flush=True)
    return report(results, equivalents, args.goal)


if __name__ == "__main__":
    sys.exit(main())
