"""The Audio Mamba encoder: patch embedding, CLS token, position embedding and Mamba blocks.

Input is a normalised log-mel filterbank ``(batch, frames, mel_bins)``. It is viewed as an image of
height = frequency and width = time and cut into ``fshape x tshape`` patches with strides
``fstride/tstride``. Tokens are in **frequency-major** order: token ``f * t_patches + t`` is the
``t``-th time patch of the ``f``-th frequency row (SSAMBA's, SSAST's and AuM's order).

Two families of presets:

* ``ssamba-{tiny,small,base}``: SSAMBA's pretraining configuration (LayerNorm, bimamba v2 with
  divide-out, Vim's layer pairing, CLS at the head, final norm applied twice, drop path 0.1).
* ``aum-{tiny,small,base}``: Audio Mamba (AuM) classifiers (RMSNorm, residual in fp32, CLS in the
  middle, no layer pairing, one final norm). AuM base was released as Fo-Bi (v1), small as Bi-Bi (v2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ssamba.audio.fbank import FeatureConfig
from ssamba.fields import dataclass_from_dict
from ssamba.models.mamba import BimambaType, Block, DropPath, MambaMixer, NormType, make_norm

ClsPosition = Literal["head", "middle", "none"]
Pooling = Literal["mean", "cls"]

WIDTHS = {"tiny": 192, "small": 384, "base": 768}


@dataclass
class EncoderConfig:
    """Architecture of an :class:`AudioMambaEncoder` (defaults: SSAMBA base)."""

    embed_dim: int = 768
    depth: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    """Rank of the dt projection; None means ``ceil(embed_dim / 16)``."""
    bimamba: BimambaType = "v2"
    divide_out: bool = True
    """v2 only: average (instead of sum) the forward and backward branch outputs."""
    norm: NormType = "layernorm"
    norm_eps: float = 1e-5
    residual_in_fp32: bool = False
    layer_pairing: bool = True
    """Vim's ``if_bidirectional``: layers 2i and 2i+1 see the sequence and its reverse, summed."""
    double_final_norm: bool = True
    """SSAMBA applies the final norm twice before pooling and the heads."""
    cls_position: ClsPosition = "head"
    pool: Pooling = "mean"
    """``embed()``: mean over patch tokens (CLS excluded) or the CLS token."""
    drop_path_rate: float = 0.1
    num_mel_bins: int = 128
    target_length: int = 1024
    fshape: int = 16
    tshape: int = 16
    fstride: int = 16
    tstride: int = 16
    scan_backend: str | None = None
    """Selective-scan backend (see ``ssamba.models.scan``); None picks one for the device."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        positive = ("embed_dim", "depth", "d_state", "d_conv", "expand", "num_mel_bins", "target_length", "fshape", "tshape", "fstride", "tstride")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EncoderConfig.{name} must be a positive integer, got {value!r}")
        choices = {"bimamba": ("none", "v1", "v2"), "norm": ("layernorm", "rmsnorm"), "cls_position": ("head", "middle", "none"), "pool": ("mean", "cls")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"EncoderConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.dt_rank is not None and self.dt_rank <= 0:
            raise ValueError(f"EncoderConfig.dt_rank must be positive or None, got {self.dt_rank!r}")
        if self.layer_pairing and self.depth % 2:
            raise ValueError(f"EncoderConfig.layer_pairing needs an even depth, got depth={self.depth}")
        if self.pool == "cls" and self.cls_position == "none":
            raise ValueError("EncoderConfig.pool='cls' needs a CLS token (cls_position 'head' or 'middle')")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"EncoderConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if self.fshape > self.num_mel_bins or self.tshape > self.target_length:
            raise ValueError(
                f"EncoderConfig: patch {self.fshape}x{self.tshape} is larger than the input {self.num_mel_bins}x{self.target_length}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency patches, time patches) for ``num_mel_bins x target_length`` inputs."""
        return grid_size(self.num_mel_bins, self.target_length, self.fshape, self.tshape, self.fstride, self.tstride)

    @property
    def num_patches(self) -> int:
        f, t = self.grid
        return f * t

    @property
    def num_cls_tokens(self) -> int:
        return 0 if self.cls_position == "none" else 1

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderConfig:
        """Build from a dict, rejecting unknown keys by name."""
        return dataclass_from_dict(cls, values)


def grid_size(freq: int, time: int, fshape: int, tshape: int, fstride: int, tstride: int) -> tuple[int, int]:
    """Number of patches along frequency and time for a convolution without padding."""
    return (freq - fshape) // fstride + 1, (time - tshape) // tstride + 1


def _ssamba_preset(size: str) -> EncoderConfig:
    return EncoderConfig(embed_dim=WIDTHS[size])


def _aum_preset(size: str) -> EncoderConfig:
    return EncoderConfig(
        embed_dim=WIDTHS[size],
        bimamba="v1" if size == "base" else "v2",
        norm="rmsnorm",
        residual_in_fp32=True,
        layer_pairing=False,
        double_final_norm=False,
        cls_position="middle",
        pool="cls",
        drop_path_rate=0.0,
    )


_PRESETS = {f"ssamba-{s}": _ssamba_preset for s in WIDTHS} | {f"aum-{s}": _aum_preset for s in WIDTHS}


def available_presets() -> list[str]:
    """Names accepted by :func:`preset_config`."""
    return list(_PRESETS)


def preset_config(name: str, **overrides: Any) -> EncoderConfig:
    """The named preset (``ssamba-tiny``, ``aum-small``, ...) with optional field overrides."""
    if name not in _PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; available: {', '.join(_PRESETS)}")
    return _PRESETS[name](name.split("-", 1)[1]).replace(**overrides)


class PatchEmbed(nn.Module):
    """Conv2d patch embedding of a (batch, 1, freq, time) image into (batch, patches, dim)."""

    def __init__(self, dim: int, fshape: int, tshape: int, fstride: int, tstride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=(fshape, tshape), stride=(fstride, tstride))

    def forward(self, image: Tensor) -> Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)


class AudioMambaEncoder(nn.Module):
    """Bidirectional Mamba encoder over log-mel patches (SSAMBA / AuM).

    ``encoder(fbank)`` maps a normalised fbank (B, T, F) to token features (B, tokens, D) after the
    final norm, CLS included at its configured position; ``encoder.embed(fbank)`` pools them to (B, D).
    ``encoder.features(wave)`` computes that input from a waveform with ``encoder.feature_config``
    (set by :func:`ssamba.load_encoder` from the checkpoint; else SSAMBA's recipe sized to ``config``).
    """

    def __init__(self, config: EncoderConfig, feature_config: FeatureConfig | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if feature_config is None:
            feature_config = FeatureConfig(num_mel_bins=config.num_mel_bins, target_length=config.target_length)
        if (feature_config.num_mel_bins, feature_config.target_length) != (config.num_mel_bins, config.target_length):
            raise ValueError(
                f"feature_config gives {feature_config.target_length} frames x {feature_config.num_mel_bins} mel bins, "
                f"the encoder expects {config.target_length} x {config.num_mel_bins}"
            )
        self.feature_config = feature_config
        """How a waveform becomes this encoder's input (mel bins, frames, normalisation statistics)."""
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(dim, config.fshape, config.tshape, config.fstride, config.tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.num_cls_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_cls_tokens + config.num_patches, dim))
        # Vim's stochastic-depth schedule: linear 0..rate over the layers, shifted by one layer.
        rates = [0.0] + torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.layers = nn.ModuleList(
            Block(
                dim,
                MambaMixer(dim, config.d_state, config.d_conv, config.expand, config.dt_rank, config.bimamba, config.divide_out, config.scan_backend),
                make_norm(config.norm, dim, config.norm_eps),
                drop_path=rates[i],
                residual_in_fp32=config.residual_in_fp32,
            )
            for i in range(config.depth)
        )
        self.drop_path_f = DropPath(config.drop_path_rate)
        self.norm_f = make_norm(config.norm, dim, config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Vim/Mamba initialisation (see ``docs`` in the README: Initialisation)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, module in self.layers.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
            if name.endswith("out_proj"):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                with torch.no_grad():
                    module.weight /= math.sqrt(self.config.depth)

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency patches, time patches) of the configured input size."""
        return self.config.grid

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    @property
    def cls_index(self) -> int | None:
        """Position of the CLS token in the output sequence, or None."""
        return {"head": 0, "middle": self.num_patches // 2, "none": None}[self.config.cls_position]

    def patchify(self, fbank: Tensor) -> Tensor:
        """Patch embeddings (B, N, D) of a normalised fbank (B, T, F); no CLS, no position embedding.

        Raises ValueError for a wrong shape and for NaN/Inf input."""
        c = self.config
        if fbank.ndim != 3:
            raise ValueError(f"expected fbank of shape (batch, frames, mel_bins), got {tuple(fbank.shape)}")
        _, frames, bins = fbank.shape
        if bins != c.num_mel_bins:
            raise ValueError(f"expected {c.num_mel_bins} mel bins (last axis), got {bins}; input shape {tuple(fbank.shape)}")
        if frames != c.target_length:
            raise ValueError(
                f"expected {c.target_length} frames (the encoder's target_length), got {frames}; "
                "pad/crop the fbank or load the encoder with a matching target_length"
            )
        # One cheap reduction (NaN/Inf make the sum non-finite; the exact test only runs then, against
        # overflow). Skipped while training on an accelerator, where it would add a host sync per step
        # and the data loader has already dropped non-finite features.
        check = not self.training or fbank.device.type == "cpu"
        if check and not torch.isfinite(fbank.sum()) and not torch.isfinite(fbank).all():
            raise ValueError("the fbank input contains NaN or infinite values; check the audio and the feature statistics")
        return self.patch_embed(fbank.unsqueeze(1).transpose(2, 3))

    def forward_tokens(self, patches: Tensor) -> Tensor:
        """Run the encoder on patch embeddings (B, N, D); returns (B, N + n_cls, D) after the final norm."""
        return self._final_norm(*self._run_layers(self._input_tokens(patches)))

    def _input_tokens(self, patches: Tensor) -> Tensor:
        tokens = patches
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        tokens = tokens + self.pos_embed
        if self.config.cls_position == "middle":
            tokens = _move_token(tokens, 0, self.cls_index)
        return tokens

    def _run_layers(self, hidden: Tensor, states: list[Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """Run the blocks; when ``states`` is a list, append the residual stream after each block (pair)."""
        residual = None
        if not self.config.layer_pairing:
            for layer in self.layers:
                hidden, residual = layer(hidden, residual)
                if states is not None:
                    states.append(residual + hidden)
            return hidden, residual
        for fwd, bwd in zip(self.layers[0::2], self.layers[1::2]):
            h_f, r_f = fwd(hidden, residual)
            h_b, r_b = bwd(hidden, residual, time_reversed=True)  # the flipped sequence, kept in input order
            hidden, residual = h_f + h_b, r_f + r_b
            if states is not None:
                states.append(residual + hidden)
        return hidden, residual

    @property
    def num_hidden_states(self) -> int:
        """Entries of :meth:`hidden_states`: one per block, or per pair of blocks with layer pairing."""
        return self.config.depth // 2 if self.config.layer_pairing else self.config.depth

    def hidden_states(self, fbank: Tensor) -> list[Tensor]:
        """Token features (B, N + n_cls, D) after each block (each pair with layer pairing), for probing.

        Entry ``k`` is the residual stream after block (pair) ``k``, before any final norm; the last
        entry is replaced by the final-normed output, so ``hidden_states(x)[-1]`` equals ``forward(x)``.
        """
        states: list[Tensor] = []
        hidden, residual = self._run_layers(self._input_tokens(self.patchify(fbank)), states)
        states[-1] = self._final_norm(hidden, residual)
        return states

    def _final_norm(self, hidden: Tensor, residual: Tensor | None) -> Tensor:
        residual = hidden if residual is None else residual + self.drop_path_f(hidden)
        out = self.norm_f(residual.to(self.norm_f.weight.dtype))
        if self.config.double_final_norm:
            out = self.norm_f(out)
        return out

    def patch_tokens(self, tokens: Tensor) -> Tensor:
        """Drop the CLS token from (B, N + n_cls, D), keeping the frequency-major patch order."""
        index = self.cls_index
        if index is None:
            return tokens
        return torch.cat([tokens[:, :index], tokens[:, index + 1 :]], dim=1)

    def forward(self, fbank: Tensor) -> Tensor:
        """Token features (B, N + n_cls, D) of a normalised fbank (B, T, F)."""
        return self.forward_tokens(self.patchify(fbank))

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, D) clip embedding from token features, per ``config.pool``."""
        if self.config.pool == "cls":
            return tokens[:, self.cls_index]
        return self.patch_tokens(tokens).mean(dim=1)

    def embed(self, fbank: Tensor) -> Tensor:
        """Clip embedding (B, D): the configured pooling of :meth:`forward`."""
        return self.pool(self(fbank))

    def features(self, waveform: Tensor, sample_rate: int | None = None) -> Tensor:
        """1-D waveform -> the normalised ``(target_length, num_mel_bins)`` fbank this encoder expects.

        ``sample_rate`` defaults to ``feature_config.sample_rate`` (16 kHz for SSAMBA); other rates are
        resampled first. Batch the results with ``torch.stack`` (or ``features[None]`` for one clip).
        """
        rate = self.feature_config.sample_rate
        if sample_rate is not None and sample_rate != rate:
            from ssamba.audio.io import resample

            waveform = torch.from_numpy(resample(waveform.detach().cpu().float().numpy(), sample_rate, rate))
        return self.feature_config.features(waveform)


def _move_token(tokens: Tensor, src: int, dst: int) -> Tensor:
    """Move token ``src`` to position ``dst`` (positions of the others keep their order)."""
    token = tokens[:, src : src + 1]
    rest = torch.cat([tokens[:, :src], tokens[:, src + 1 :]], dim=1)
    return torch.cat([rest[:, :dst], token, rest[:, dst:]], dim=1)
