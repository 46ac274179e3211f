"""Which class a map explains: top-1, an index, a name search, or the top-k side by side."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch


class TargetError(ValueError):
    """A class id out of range or a name that matches nothing; meant for the user."""


@dataclass(frozen=True)
class Prediction:
    index: int
    name: str
    probability: float


def top_predictions(probs: torch.Tensor, backbone, k: int = 5) -> list[Prediction]:
    k = min(k, probs.numel())
    values, indices = probs.topk(k)
    return [Prediction(int(i), backbone.class_name(int(i)), float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def search_classes(query: str, class_names: list[str], limit: int = 20) -> list[int]:
    """Class indices whose name contains the query (case-insensitive), best first: a whole
    synonym ("cat" = "cat"), then a whole word ("tiger cat"), then a word prefix
    ("catamaran", "Rana catesbeiana"), then any substring ("oystercatcher"); in class order
    within each."""
    q = query.strip().lower()
    if not q:
        return []
    tiers: tuple[list[int], ...] = ([], [], [], [])
    whole_word = re.compile(r"\b" + re.escape(q) + r"\b")
    word_prefix = re.compile(r"\b" + re.escape(q))
    for i, name in enumerate(class_names):
        lname = name.lower()
        if q not in lname:
            continue
        if q in (s.strip() for s in lname.split(",")):
            tiers[0].append(i)
        elif whole_word.search(lname):
            tiers[1].append(i)
        elif word_prefix.search(lname):
            tiers[2].append(i)
        else:
            tiers[3].append(i)
    return [i for tier in tiers for i in tier][:limit]


_TOPK = re.compile(r"^top-?(\d+)$")


def resolve_targets(target, probs: torch.Tensor, backbone) -> list[int]:
    """None / 'auto' -> [top-1]; int or digits -> [that class]; 'top3' -> the 3 best;
    any other string -> the best match of a class-name search."""
    num_classes = probs.numel()
    if target is None or (isinstance(target, str) and target.strip().lower() in ("", "auto", "top1", "top-1")):
        return [int(probs.argmax())]
    if isinstance(target, str):
        text = target.strip().lower()
        m = _TOPK.match(text)
        if m:
            k = int(m.group(1))
            if not 1 <= k <= num_classes:
                raise TargetError(f"top-k needs 1 <= k <= {num_classes}, got {k}")
            return [int(i) for i in probs.topk(k).indices]
        if re.fullmatch(r"-?\d+", text):
            target = int(text)
        else:
            found = search_classes(text, backbone.class_names)
            if not found:
                raise TargetError(f"no class name matches '{target}'")
            return [found[0]]
    if isinstance(target, (list, tuple)):
        return [t for item in target for t in resolve_targets(item, probs, backbone)]
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer, float, np.floating)):
        raise TargetError(f"a class is an integer id, a class name or 'topK', got {target!r}")
    if isinstance(target, (float, np.floating)) and not float(target).is_integer():
        raise TargetError(f"a class id is a whole number, got {target!r}")
    index = int(target)
    if not 0 <= index < num_classes:
        raise TargetError(f"class id {index} is out of range: {backbone.name} has classes 0..{num_classes - 1}")
    return [index]
