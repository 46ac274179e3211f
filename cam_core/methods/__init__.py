"""Importing this package registers every built-in method (one module each family)."""

from .base import (METHODS, Cancelled, MethodContext, MethodError, MethodOutput, MethodSpec, Param, get_method,
                   register)
from . import activation, attention, cicam, gradient, lpcam, scorecam, sipe  # noqa: F401  (registration side effects)

__all__ = ["METHODS", "Cancelled", "MethodContext", "MethodError", "MethodOutput", "MethodSpec", "Param",
           "get_method", "register"]
