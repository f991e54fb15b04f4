"""Fine-tuned classifiers as self-contained export directories, and loading them back.

An export directory holds ``model.safetensors`` (encoder and head weights, this package's names),
``config.json`` (format ``ssamba-classifier``: encoder config, head, task, class list, feature
parameters with normalisation statistics, how scores are activated, provenance), ``classes.txt``
(one class per line, in output order) and ``README.md`` (a short model card)::

    import ssamba
    from ssamba.interop.classifier import activate
    model = ssamba.load_classifier("exp/esc50/model")     # ready AudioMambaClassifier, eval mode
    fbank = model.features.features(waveform)               # (frames, bins) model input
    scores = activate(model(fbank[None]), model.activation)  # (1, classes); model.classes names them

``ssamba finetune`` writes one as ``RUN/model`` (and ``RUN/fold-<k>/model``); ``ssamba predict``
reads it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

import ssamba
from ssamba.audio.fbank import FeatureConfig
from ssamba.fields import dataclass_from_dict
from ssamba.interop.checkpoints import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, _load_strict
from ssamba.models.encoder import AudioMambaEncoder, EncoderConfig

CLASSIFIER_FORMAT = "ssamba-classifier"
CLASSIFIER_VERSION = 1
CLASSES_FILE = "classes.txt"
CARD_FILE = "README.md"
Activation = Literal["sigmoid", "softmax"]


def classifier_options(model: nn.Module, features: FeatureConfig, seconds_per_label: float | None) -> dict[str, Any]:
    """The constructor options of an :class:`AudioMambaClassifier` besides encoder and class count."""
    options: dict[str, Any] = {"head": model.head_type}
    if model.task == "per_second":
        if seconds_per_label is None:
            raise ValueError("a per-second classifier needs seconds_per_label to be exported")
        options.update(
            task="per_second", seconds=model.seconds, seconds_per_label=seconds_per_label,
            frame_shift_ms=features.frame_shift_ms, frame_length_ms=features.frame_length_ms,
        )
    return options


def export_classifier(
    model: nn.Module,
    out_dir: str | Path,
    *,
    classes: Sequence[str],
    features: FeatureConfig,
    multilabel: bool,
    activation: Activation = "sigmoid",
    seconds_per_label: float | None = None,
    display_names: Sequence[str] | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an :class:`~ssamba.models.classifier.AudioMambaClassifier` as an export directory.

    ``classes`` names the outputs in order; ``features`` is how audio becomes its input;
    ``activation`` turns logits into scores (sigmoid for BCE-trained models, softmax for CE);
    ``seconds_per_label`` is required for a per-second classifier.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    existing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, CLASSES_FILE, CARD_FILE) if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds {', '.join(existing)}; choose another directory or pass overwrite=True")
    num_classes = _num_outputs(model)
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {num_classes} outputs")
    if activation not in ("sigmoid", "softmax"):
        raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": CLASSIFIER_FORMAT,
        "version": CLASSIFIER_VERSION,
        "encoder": {**model.encoder.config.to_dict(), "scan_backend": None},
        "classifier": classifier_options(model, features, seconds_per_label),
        "classes": list(classes),
        "display_names": list(display_names) if display_names is not None else None,
        "multilabel": bool(multilabel),
        "activation": activation,
        "features": features.to_dict(),
        "provenance": {
            **(provenance or {}),
            "ssamba_version": ssamba.__version__,
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    }
    state = {k: v.detach().cpu().float().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / CLASSES_FILE).write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    (out / CARD_FILE).write_text(_model_card(config), encoding="utf-8")
    return out


def _num_outputs(model: nn.Module) -> int:
    head = model.head[-1] if isinstance(model.head, nn.Sequential) else model.head
    return head.out_features


def load_classifier(path: str | Path) -> nn.Module:
    """Load a classifier export directory (or its ``config.json``) as a ready ``AudioMambaClassifier``.

    Returned in eval mode, with attributes ``classes`` (output names), ``display_names`` (or None),
    ``features`` (:class:`FeatureConfig`: ``model.features.features(waveform)`` gives its input),
    ``multilabel`` and ``activation`` (sigmoid or softmax as trained; :func:`activate` applies it).
    """
    from safetensors.torch import load_file

    from ssamba.models.classifier import AudioMambaClassifier

    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE} (expected a classifier export directory written by ssamba finetune)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("format") != CLASSIFIER_FORMAT:
        found = config.get("format") if isinstance(config, dict) else config
        hint = "; an encoder export: use ssamba.load_encoder" if found == "ssamba-encoder" else ""
        raise CheckpointError(f"{config_path}: expected \"format\": \"{CLASSIFIER_FORMAT}\", got {found!r}{hint}")
    if config.get("version") != CLASSIFIER_VERSION:
        raise CheckpointError(f"{config_path}: unsupported classifier version {config.get('version')!r} (this ssamba reads {CLASSIFIER_VERSION})")
    try:
        encoder_config = EncoderConfig.from_dict(config["encoder"])
        features = dataclass_from_dict(FeatureConfig, config["features"])
        classes = list(config["classes"])
        model = AudioMambaClassifier(AudioMambaEncoder(encoder_config), len(classes), **config["classifier"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: invalid classifier config: {err}") from err
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types for corrupt or missing files
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({err})") from err
    _load_strict(model, state, weights_path)
    model.classes = classes
    model.display_names = config.get("display_names")
    model.features = features
    model.multilabel = bool(config["multilabel"])
    model.activation = config["activation"]
    return model.eval()


def activate(logits: Tensor, activation: Activation) -> Tensor:
    """Scores from logits: sigmoid (multi-label / BCE-trained) or softmax over the last axis."""
    return logits.float().softmax(-1) if activation == "softmax" else logits.float().sigmoid()


def _model_card(config: dict[str, Any]) -> str:
    enc, feat, classes = config["encoder"], config["features"], config["classes"]
    task = config["classifier"].get("task", "clip")
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    lines = [
        "# SSAMBA audio classifier",
        "",
        f"Fine-tuned by ssamba {ssamba.__version__}: a width-{enc['embed_dim']}, depth-{enc['depth']} Audio Mamba encoder "
        f"({enc['fshape']}x{enc['tshape']} patches, stride {enc['fstride']}x{enc['tstride']}) with a {config['classifier']['head']} head.",
        "",
        f"- task: {'one prediction per clip' if task == 'clip' else 'one prediction per second'}, "
        f"{'multi-label' if config['multilabel'] else 'single-label'}, scores = {config['activation']}(logits)",
        f"- input: {feat['sample_rate']} Hz mono, {feat['num_mel_bins']} mel bins, {feat['target_length']} frames, "
        f"normalised as (fbank - ({feat['mean']})) / (2 * {feat['std']})",
        f"- classes ({len(classes)}): {shown}",
        "",
        "## Usage",
        "",
        "```python",
        "import ssamba",
        "model = ssamba.load_classifier('THIS_DIRECTORY')",
        "```",
        "",
        "Or from the shell: `ssamba predict AUDIO_FILES --model THIS_DIRECTORY`.",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(config["provenance"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)

