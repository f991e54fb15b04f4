"""An s3prl upstream for ssamba encoders (SUPERB: KS1, VoxCeleb1 SID, IEMOCAP ER through s3prl).

s3prl's ``run_downstream.py -u NAME -k CKPT`` builds ``getattr(s3prl.hub, NAME)(ckpt=CKPT,
model_config=..., refresh=...)`` and calls it with a list of unpadded 1-D 16 kHz waveforms. This
module's entries (``ssamba_local``, ``ssamba_custom``; the repository's ``hubconf.py`` re-exports
them for ``torch.hub``) return :class:`SsambaUpstream`, which answers with
``{"hidden_states": [one (B, T, F' x D) tensor per block (pair)], "last_hidden_state": ...}`` and
reports ``get_downsample_rates() = 160 x tstride`` samples per output frame.

How the waveform becomes frames (SSAMBA's SUPERB wrapper, with every layer's output instead of only
the last): each waveform is cut into non-overlapping ``window_secs`` windows (the last one
zero-padded), each window becomes the encoder's fbank input (its normalisation), the patch tokens
of every block are arranged on the (frequency, time) grid and the frequency rows of each time column
are concatenated (``freq_pool="concat"``, F' x D features, as SSAMBA) or averaged
(``freq_pool="mean"``, D features); windows are joined in time and each item is trimmed to
``ceil(samples / rate)`` frames, the length s3prl's Featurizer expects.

Using it with s3prl 0.4.x (its hub lists upstreams explicitly, so register ours once)::

    pip install "ssamba[s3prl]"
    mkdir -p $(python -c "import s3prl, os; print(os.path.dirname(s3prl.__file__))")/upstream/ssamba
    echo "from ssamba.interop.s3prl_upstream import ssamba_local, ssamba_custom" \\
        > .../s3prl/upstream/ssamba/hubconf.py
    echo "from s3prl.upstream.ssamba.hubconf import *" >> .../s3prl/hub.py
    python run_downstream.py -m train -u ssamba_local -k exported/ssamba-tiny -d voxceleb1 -f -n sid-tiny
    python run_downstream.py -m train -u ssamba_local -k amba_base_400.pth -d emotion -f -n er-fold1 \\
        -o "config.downstream_expert.datarc.test_fold='fold1'"

``-k`` takes anything :func:`ssamba.load_encoder` reads (our exports and runs, official SSAMBA
``.pth``, AuM checkpoints); ``-g`` may name a YAML file with ``window_secs``, ``tstride``,
``fstride`` and ``freq_pool``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

SAMPLE_RATE = 16000
DEFAULT_WINDOW_SECS = 10.0
DEFAULT_STRIDE = 10
FREQ_POOLS = ("concat", "mean")


class SsambaUpstream(nn.Module):
    """s3prl upstream: ``forward(list of (samples,) 16 kHz tensors) -> {"hidden_states": [...], ...}``."""

    def __init__(self, ckpt: str, window_secs: float = DEFAULT_WINDOW_SECS, fstride: int = DEFAULT_STRIDE,
                 tstride: int = DEFAULT_STRIDE, freq_pool: str = "concat") -> None:
        super().__init__()
        from ssamba.audio.fbank import FeatureConfig
        from ssamba.interop.checkpoints import load_checkpoint

        if not ckpt:
            raise ValueError("the ssamba upstream needs a checkpoint: pass -k PATH (export dir, run, .pt/.pth)")
        if freq_pool not in FREQ_POOLS:
            raise ValueError(f"freq_pool must be one of {FREQ_POOLS}, got {freq_pool!r}")
        if window_secs <= 0:
            raise ValueError(f"window_secs must be positive, got {window_secs}")
        frames = int(round(window_secs * 100))
        checkpoint = load_checkpoint(ckpt, target_length=frames, fstride=fstride, tstride=tstride)
        self.encoder = checkpoint.build_encoder()
        features = checkpoint.features if checkpoint.features is not None else FeatureConfig()
        self.features = replace(features, target_length=frames, crop="start")
        if self.features.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{ckpt}: the encoder expects {self.features.sample_rate} Hz input; s3prl feeds 16 kHz")
        self.window_samples = int(round(window_secs * SAMPLE_RATE))
        self.freq_pool = freq_pool

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Input samples per output frame: 10 ms fbank hop x the time stride of the patches."""
        return self.features.frame_shift_samples * self.encoder.config.tstride

    def _window_features(self, wav: Tensor) -> Tensor:
        """(windows, frames, bins): non-overlapping windows, the last zero-padded."""
        count = max(1, math.ceil(wav.shape[0] / self.window_samples))
        padded = torch.nn.functional.pad(wav, (0, count * self.window_samples - wav.shape[0]))
        return torch.stack([self.features.features(chunk) for chunk in padded.view(count, self.window_samples)])

    def _frames(self, tokens: Tensor) -> Tensor:
        """Block output (windows, N + cls, D) -> (windows x T', F' x D or D) time frames."""
        f, t = self.encoder.config.grid
        grid = self.encoder.patch_tokens(tokens).reshape(tokens.shape[0], f, t, -1).permute(0, 2, 1, 3)  # (W, T', F', D)
        frames = grid.flatten(2) if self.freq_pool == "concat" else grid.mean(dim=2)
        return frames.reshape(-1, frames.shape[-1])

    def forward(self, wavs: list[Tensor]) -> dict[str, object]:
        rate = self.get_downsample_rates()
        per_item: list[list[Tensor]] = []
        for wav in wavs:
            states = self.encoder.hidden_states(self._window_features(wav.float().cpu()).to(self._device()))
            length = max(1, math.ceil(wav.shape[0] / rate))
            per_item.append([self._frames(state)[:length] for state in states])
        longest = max(items[0].shape[0] for items in per_item)
        hidden_states = [
            torch.stack([nn.functional.pad(items[layer], (0, 0, 0, longest - items[layer].shape[0])) for items in per_item])
            for layer in range(len(per_item[0]))
        ]
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}

    def _device(self) -> torch.device:
        return next(self.encoder.parameters()).device


def _options(model_config: str | None) -> dict[str, object]:
    if not model_config:
        return {}
    values = yaml.safe_load(Path(model_config).read_text(encoding="utf-8")) or {}
    allowed = {"window_secs", "fstride", "tstride", "freq_pool"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{model_config}: unknown upstream options {unknown}; allowed: {sorted(allowed)}")
    return values


def ssamba_local(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False, **kwargs: object) -> SsambaUpstream:
    """s3prl/torch.hub entry: an ssamba encoder from a local checkpoint (``-k PATH``), options from ``-g YAML``."""
    return SsambaUpstream(ckpt or "", **_options(model_config))


def ssamba_custom(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False, **kwargs: object) -> SsambaUpstream:
    """Alias of :func:`ssamba_local` under s3prl's naming convention for "needs -k" entries."""
    return ssamba_local(ckpt, model_config, refresh, **kwargs)
