"""Per-call views of a shared model's intermediate outputs.

A cached model serves every browser session at once, so a tap (a forward hook that reads or
replaces a module's output) must only ever see the forward pass of the call that opened it.
A Tap installs its hooks on entry and removes them on exit; while installed, each hook acts
only when the tap active in the calling thread's context (a ContextVar) is its own, and
passes every other thread's forward through untouched. So a tap never captures another
call's tensors, never changes another call's outputs, and leaves nothing on the model.

(Adding or removing a hook while another thread runs the module is safe in CPython: torch
copies a module's hook dict into a tuple in one C-level step before calling the hooks.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar

from torch import nn

# The tap of the forward pass running in this thread (or asyncio task), if any.
_ACTIVE: ContextVar[Tap | None] = ContextVar("cam_core_active_tap", default=None)


class Tap:
    """Context manager: while open, `on_output(name, output)` is called for each output of the
    named modules produced by forward passes run in this thread's context; what it returns
    (None = keep) replaces that output, as a forward hook's return value does."""

    def __init__(self, model: nn.Module, modules: Iterable[str] | dict[str, nn.Module],
                 on_output: Callable[[str, object], object]):
        if isinstance(modules, dict):
            self.modules = dict(modules)
        else:
            self.modules = {name: model.get_submodule(name) for name in modules}
        self._on_output = on_output
        self._handles: list = []
        self._token = None

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if _ACTIVE.get() is not self:
                return None  # another call's forward (another thread, or no tap at all)
            return self._on_output(name, output)

        return hook

    def __enter__(self) -> Tap:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__()
            raise
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

