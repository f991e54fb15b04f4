"""ssamba: self-supervised audio representation learning with bidirectional Mamba encoders.

The public API is imported lazily, so `import ssamba` and the command line stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AudioMambaEncoder": "ssamba.models.encoder",
    "EncoderConfig": "ssamba.models.encoder",
    "available_presets": "ssamba.models.encoder",
    "preset_config": "ssamba.models.encoder",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssamba' has no attribute {name!r}")
