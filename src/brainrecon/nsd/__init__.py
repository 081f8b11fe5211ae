"""NSD: remote layout and keys (layout), readers, download and per-subject preparation."""

from . import layout  # noqa: F401
