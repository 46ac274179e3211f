"""Weight sources, one module each; importing them registers their names and schemes."""

from . import checkpoint, hub, lite, random_init, testbed  # noqa: F401  (registration side effects)
