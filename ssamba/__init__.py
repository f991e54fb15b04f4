"""ssamba: self-supervised audio representation learning with bidirectional Mamba encoders.

The public API is imported lazily, so `import ssamba` and the command line stay fast; `dir(ssamba)`
lists it, and type checkers and IDEs see it through the imports under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ssamba.audio.fbank import FeatureConfig, fbank, normalize
    from ssamba.audio.io import load_audio
    from ssamba.data.stream import make_loader
    from ssamba.interop.checkpoints import load_encoder, load_pretraining_model
    from ssamba.models.encoder import AudioMambaEncoder, EncoderConfig, available_presets, preset_config
    from ssamba.models.masked import MaskedPatchModel, ObjectiveConfig, PretrainOutput

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


def __dir__() -> list[str]:
    """The public API and the module's dunder attributes (not its private helpers or imports)."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__") and name.endswith("__"))})
