"""An SSAST-style transformer encoder, used only as the baseline of the efficiency benchmark.

SSAST's encoder is a DeiT: a 16x16 Conv2d patch embedding of the (batch, 1, mel_bins, frames)
fbank image, a CLS and a distillation token, a learned position embedding, ``depth`` pre-norm blocks
(multi-head self-attention, then an MLP with ratio 4 and GELU) and a final LayerNorm.  Tokens are
frequency-major, as in the SSAMBA encoder, so both models see the same patch sequence.

Two attention implementations compute the same function:

* ``"plain"``: what SSAST computes, ``softmax(q @ k^T * scale) @ v``, materialising the
  (batch, heads, tokens, tokens) attention matrix (quadratic memory);
* ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused
  (flash / memory-efficient) kernel when one exists for the device and dtype.

Example::

    model = TransformerEncoder(transformer_config("tiny", tokens=512, attention="sdpa")).eval()
    tokens = model(torch.randn(2, 1024, 128))   # (2, 2 + 512, 192)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Attention = Literal["plain", "sdpa"]

DEIT_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
"""DeiT width and number of heads per size name (SSAST's tiny/small/base)."""
DEIT_DEPTH = 12
MLP_RATIO = 4
LAYER_NORM_EPS = 1e-6
NUM_EXTRA_TOKENS = 2
"""CLS and distillation tokens, placed before the patch tokens."""
PATCH = 16
FRAMES_PER_TOKEN = 2
"""With 128 mel bins and 16x16 patches of stride 16 there are 8 frequency rows, so tokens = frames / 2."""


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a :class:`TransformerEncoder`."""

    embed_dim: int
    num_heads: int
    depth: int = DEIT_DEPTH
    mlp_ratio: int = MLP_RATIO
    num_mel_bins: int = 128
    target_length: int = 1024
    patch: int = PATCH
    attention: Attention = "plain"

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"TransformerConfig.embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.attention not in ("plain", "sdpa"):
            raise ValueError(f"TransformerConfig.attention must be 'plain' or 'sdpa', got {self.attention!r}")
        if self.num_mel_bins % self.patch or self.target_length % self.patch:
            raise ValueError(
                f"TransformerConfig: input {self.num_mel_bins}x{self.target_length} must be a multiple of the patch size {self.patch}"
            )

    @property
    def num_patches(self) -> int:
        return (self.num_mel_bins // self.patch) * (self.target_length // self.patch)


def transformer_config(size: str, tokens: int, attention: Attention = "plain", depth: int = DEIT_DEPTH) -> TransformerConfig:
    """DeiT-``size`` configuration for an input that yields ``tokens`` patches (128 mel bins)."""
    if size not in DEIT_SIZES:
        raise ValueError(f"unknown transformer size {size!r}; expected one of {', '.join(DEIT_SIZES)}")
    width, heads = DEIT_SIZES[size]
    return TransformerConfig(width, heads, depth=depth, target_length=tokens * FRAMES_PER_TOKEN, attention=attention)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm/DeiT layout)."""

    def __init__(self, dim: int, num_heads: int, attention: Attention) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attention = attention
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = (q @ k.transpose(-2, -1)) * self.scale
            out = weights.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, attention: Attention) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads, attention)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """SSAST-style (DeiT) encoder: fbank (batch, frames, mel_bins) -> tokens (batch, 2 + patches, dim)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=config.patch, stride=config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_EXTRA_TOKENS + config.num_patches, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, config.num_heads, config.mlp_ratio, config.attention) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        for parameter in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(parameter, std=0.02)

    def patchify(self, fbank: Tensor) -> Tensor:
        """Patch embeddings (batch, patches, dim) of an fbank (batch, frames, mel_bins), frequency-major."""
        c = self.config
        if fbank.ndim != 3 or fbank.shape[1:] != (c.target_length, c.num_mel_bins):
            raise ValueError(f"expected fbank of shape (batch, {c.target_length}, {c.num_mel_bins}), got {tuple(fbank.shape)}")
        return self.patch_embed(fbank.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)

    def forward(self, fbank: Tensor) -> Tensor:
        """Token features (batch, 2 + patches, dim) after the final norm; CLS and distillation tokens first."""
        patches = self.patchify(fbank)
        extra = torch.cat([self.cls_token, self.dist_token], dim=1).expand(fbank.shape[0], -1, -1)
        x = torch.cat([extra, patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
