"""Classification heads on top of an :class:`AudioMambaEncoder` (fine-tuning).

* ``head="aum"``: AuM's single ``Linear(D, classes)`` on the pooled feature (truncated-normal init).
* ``head="ssamba"``: SSAMBA's ``mlp_head`` = ``LayerNorm(D)`` then ``Linear(D, classes)``.

The pooled feature is the encoder's :meth:`~AudioMambaEncoder.embed`: mean over patch tokens for
SSAMBA presets, the CLS token for AuM presets. Logits are raw (apply sigmoid/softmax in the loss).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ssamba.models.encoder import AudioMambaEncoder

HeadType = Literal["aum", "ssamba"]


class AudioMambaClassifier(nn.Module):
    """Encoder + pooling + classification head; ``forward(fbank) -> logits (B, classes)``."""

    def __init__(self, encoder: AudioMambaEncoder, num_classes: int, head: HeadType = "aum") -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        dim = encoder.config.embed_dim
        self.encoder = encoder
        self.head_type = head
        if head == "aum":
            self.head = nn.Linear(dim, num_classes)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        elif head == "ssamba":
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        else:
            raise ValueError(f"head must be 'aum' or 'ssamba', got {head!r}")

    def forward(self, fbank: Tensor, return_features: bool = False) -> Tensor:
        """Logits (B, classes), or the pooled (B, D) features when ``return_features``."""
        features = self.encoder.embed(fbank)
        return features if return_features else self.head(features)
