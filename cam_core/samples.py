"""What each bundled sample photo truly shows (assets/samples/truth.json), so that a page can
say when a model's top-1 disagrees with the photo."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TRUTH_FILE = "truth.json"


@dataclass(frozen=True)
class SampleTruth:
    file: str
    shows: str  # what the photo shows, in words
    classes: frozenset[int]  # the ImageNet-1k ids that name it; empty: no ImageNet class does
    source: str  # where the photo comes from (SOURCES.md has the licenses)

    def agrees(self, index: int) -> bool:
        """Whether an ImageNet class id names what the photo shows."""
        return index in self.classes


def _ids(entries) -> frozenset[int]:
    ids: set[int] = set()
    for e in entries:
        if isinstance(e, str) and "-" in e:  # "151-268": an inclusive range (the dog breeds)
            lo, hi = (int(v) for v in e.split("-", 1))
            ids.update(range(lo, hi + 1))
        else:
            ids.add(int(e))
    return frozenset(ids)


def sample_truths(folder: str | Path) -> dict[str, SampleTruth]:
    """{file name: SampleTruth} from folder/truth.json; {} when the folder has none."""
    path = Path(folder) / TRUTH_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: SampleTruth(name, e["shows"], _ids(e["imagenet"]), e["source"])
            for name, e in data.items() if not name.startswith("_")}
