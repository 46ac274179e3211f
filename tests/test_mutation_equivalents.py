"""The kept list of equivalent mutants (tests/mutation_equivalents.txt) that scripts/mutation.py
reads: every line well formed, with a reason, for a module the script mutates."""

import importlib.util
import re
import sys

from helpers import ROOT

spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts" / "mutation.py")
mutation = sys.modules["mutation_script"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation)


def test_every_equivalent_names_a_mutant_its_line_and_a_reason():
    entries = mutation.load_equivalents()
    lines = [line for line in mutation.EQUIVALENTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(entries) == len(lines), "a mutant is listed twice"
    modules = {m.replace("/", ".") for m in mutation.MODULES}
    for name, eq in entries.items():
        m = re.fullmatch(r"cam_core\.(.+)\.x_\w+__mutmut_\d+", name)
        assert m and m.group(1) in modules, name
        assert eq.line and len(eq.reason) > 10, name


def test_mutated_line_is_the_first_added_line():
    diff = "--- cam_core/metrics.py\n+++ cam_core/metrics.py\n@@ -1,2 +1,2 @@\n-    a = 1\n+    a = 2\n"
    assert mutation.mutated_line(diff) == "a = 2"
