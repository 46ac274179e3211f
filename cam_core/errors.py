"""User-facing error types shared by every layer of cam_core (one home, no import cycles).

Each message is meant for the user: the CLI prints it on one line, the pages show it in place.
"""

from __future__ import annotations


class MethodError(ValueError):
    """Unknown method, bad parameter, or a method that does not apply to this backbone."""


class Cancelled(RuntimeError):
    """Raised inside a long computation when its cancel callback says so."""
