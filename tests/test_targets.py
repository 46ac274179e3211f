import pytest
import torch

from cam_core import TargetError, search_classes
from cam_core.backbones import imagenet_class_names
from cam_core.targets import resolve_targets


class _BB:
    name = "bb"
    class_names = imagenet_class_names()


def test_search_prefers_whole_synonyms():
    names = _BB.class_names
    assert search_classes("tabby", names)[0] == 281
    assert search_classes("TIGER CAT", names)[0] == 282
    assert 285 in search_classes("cat", names)[:10]
    assert search_classes("zzzz", names) == []


def test_resolve_targets_forms():
    probs = torch.zeros(1000)
    probs[[7, 3, 9]] = torch.tensor([0.5, 0.3, 0.2])
    assert resolve_targets(None, probs, _BB) == [7]
    assert resolve_targets("auto", probs, _BB) == [7]
    assert resolve_targets("42", probs, _BB) == [42]
    assert resolve_targets(999, probs, _BB) == [999]
    assert resolve_targets("top3", probs, _BB) == [7, 3, 9]
    assert resolve_targets("tabby", probs, _BB) == [281]
    with pytest.raises(TargetError, match="out of range"):
        resolve_targets(1000, probs, _BB)
    with pytest.raises(TargetError, match="out of range"):
        resolve_targets("-1", probs, _BB)
    with pytest.raises(TargetError, match="no class name matches"):
        resolve_targets("flibbertigibbet", probs, _BB)


def test_resolve_targets_refuses_what_is_not_a_class_id():
    import numpy as np

    probs = torch.zeros(1000)
    probs[7] = 1.0
    assert resolve_targets(np.int64(5), probs, _BB) == [5]
    assert resolve_targets(5.0, probs, _BB) == [5]  # a whole float is an id
    with pytest.raises(TargetError, match="whole number"):
        resolve_targets(3.7, probs, _BB)  # used to explain class 3
    for bad in (True, False, np.bool_(True)):
        with pytest.raises(TargetError, match="integer id"):
            resolve_targets(bad, probs, _BB)  # True used to explain class 1
    with pytest.raises(TargetError, match="integer id"):
        resolve_targets(object(), probs, _BB)


def test_search_ranks_whole_words_before_word_prefixes_before_substrings():
    """Issue 9 item 13: "cat" listed bullfrog (Rana catesbeiana) and oystercatcher before tabby."""
    names = _BB.class_names
    found = search_classes("cat", names)
    pos = {names[i].split(",")[0]: n for n, i in enumerate(found)}
    assert max(pos["tabby"], pos["tiger cat"], pos["Egyptian cat"]) < min(pos["bullfrog"], pos["oystercatcher"])
    assert pos["bullfrog"] < pos["oystercatcher"]  # a word prefix before a substring
