"""Default values shared by the library and the command line (torch-free, so `--help` stays fast)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_WINDOW_SECONDS = 10.0
"""Window length for embedding and probing long clips (seconds)."""
DEFAULT_BATCH_SIZE = 16
"""Clips (or windows) per forward pass when embedding and probing."""
DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Inverse L2 strengths the linear probe chooses from."""
PROBE_POOLINGS = ("mean", "cls", "both", "freq")
"""Probe readouts of a block's tokens: patch mean, CLS, both, or per-frequency-row means over the clip's columns."""

ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 17
ONNX_EXTRA_HINT = "pip install 'ssamba[onnx]'"


def default_cache_dir() -> Path:
    """Where `ssamba probe` caches embeddings: ``$XDG_CACHE_HOME/ssamba/probe`` (``~/.cache/ssamba/probe``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssamba" / "probe"
