"""Per-second labelling: pooling over the (frequency, time) grid, checked against a hand-computed example."""

from __future__ import annotations

import pytest
import torch

from ssamba.models.classifier import AudioMambaClassifier, column_centres, per_second_pool, second_weights
from ssamba.models.encoder import AudioMambaEncoder, preset_config


def test_column_centres_by_hand() -> None:
    config = preset_config("ssamba-tiny", num_mel_bins=32, target_length=112)  # 16x16 patches, stride 16: 7 columns
    # column t: frames 16t..16t+15, centre (16t + 7.5) * 10 ms + 12.5 ms
    expected = [0.0875, 0.2475, 0.4075, 0.5675, 0.7275, 0.8875, 1.0475]
    torch.testing.assert_close(column_centres(config), torch.tensor(expected, dtype=torch.float64))


def test_per_second_pool_matches_hand_example() -> None:
    grid = (2, 7)  # 2 frequency rows x 7 time columns, frequency-major tokens f * 7 + t
    centres = torch.tensor([0.0875, 0.2475, 0.4075, 0.5675, 0.7275, 0.8875, 1.0475], dtype=torch.float64)
    weights = second_weights(centres, seconds=2, seconds_per_label=0.5)
    # half-second 0 holds columns 0, 1, 2; half-second 1 columns 3, 4, 5; column 6 (1.05 s) is after the labels
    tokens = torch.arange(14, dtype=torch.float32).reshape(1, 14, 1) ** 2
    pooled = per_second_pool(tokens, grid, weights)
    first = sum(i**2 for i in (0, 1, 2, 7, 8, 9)) / 6  # all frequency rows of columns 0-2
    second = sum(i**2 for i in (3, 4, 5, 10, 11, 12)) / 6
    torch.testing.assert_close(pooled, torch.tensor([[[first], [second]]]))
    # The original's chunks of the flattened sequence would have mixed one band over the whole clip:
    assert first != sum(i**2 for i in range(7)) / 7
    with pytest.raises(ValueError, match="second 3 .* has no patch column"):
        second_weights(centres, seconds=4, seconds_per_label=0.5)
    with pytest.raises(ValueError, match="expected 2 x 7 = 14 patch tokens"):
        per_second_pool(tokens[:, :13], grid, weights)


def test_per_second_classifier_shapes_and_pooling() -> None:
    torch.manual_seed(0)
    config = preset_config("ssamba-tiny", embed_dim=32, depth=2, num_mel_bins=32, target_length=208)  # 13 columns, 2.08 s
    encoder = AudioMambaEncoder(config).eval()
    model = AudioMambaClassifier(encoder, 5, head="ssamba", task="per_second").eval()
    assert model.seconds == 2
    fbank = torch.randn(3, 208, 32)
    with torch.no_grad():
        logits = model(fbank)
        features = model(fbank, return_features=True)
        tokens = encoder.patch_tokens(encoder(fbank)).reshape(3, 2, 13, 32)
    assert logits.shape == (3, 2, 5) and features.shape == (3, 2, 32)
    # centres 0.0875 + 0.16 t: second 0 = columns 0-5, second 1 = columns 6-11 (column 12 at 2.0075 s is past 2 s)
    torch.testing.assert_close(features[:, 0], tokens[:, :, 0:6].mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(features[:, 1], tokens[:, :, 6:12].mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)
    clip_model = AudioMambaClassifier(encoder, 5)
    assert clip_model(fbank).shape == (3, 5)
