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
    "fbank": "ssamba.audio.fbank",
    "normalize": "ssamba.audio.fbank",
    "FeatureConfig": "ssamba.audio.fbank",
    "load_audio": "ssamba.audio.io",
    "make_loader": "ssamba.data.stream",
    "load_encoder": "ssamba.interop.checkpoints",
    "load_pretraining_model": "ssamba.interop.checkpoints",
    "load_classifier": "ssamba.interop.classifier",
    "export_classifier": "ssamba.interop.classifier",
    "MaskedPatchModel": "ssamba.models.masked",
    "ObjectiveConfig": "ssamba.models.masked",
    "PretrainOutput": "ssamba.models.masked",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssamba' has no attribute {name!r}")
