"""HEAR 2021 API: the checks of hear-validator (hearvalidator/validate.py), replayed without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_export
from ssamba import hear

VALIDATOR_SAMPLE_RATES = (16000, 22050, 44100, 48000)
TIMESTAMP_CASES = ((2, 1.07), (2, 1.98), (2, 4.0))  # (num_audio, seconds) the validator runs
SCENE_CASE = (4, 2.74)
MAX_JITTER_MS = 1.0
SUGGESTED_HOP_MS = 50.0


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("hear"))


def _white_noise(num_audio, seconds, rate):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(num_audio, int(seconds * rate), generator=gen) * 2 - 1


def _validate_timestamps(model, num_audio, seconds):
    """hear-validator's _check_timestamp_embeddings: errors become assertion failures; returns the hop."""
    embeddings, timestamps = hear.get_timestamp_embeddings(_white_noise(num_audio, seconds, model.sample_rate), model)
    assert embeddings.dtype == torch.float32
    embeddings, timestamps = embeddings.numpy(), timestamps.numpy()
    assert embeddings.ndim == 3 and timestamps.ndim == 2
    assert embeddings.shape[0] == num_audio
    assert embeddings.shape[:2] == timestamps.shape
    assert embeddings.shape[2] == model.timestamp_embedding_size
    assert timestamps.shape[1] > 1
    diff = np.diff(timestamps)
    avg = diff.mean()
    assert np.max(np.abs(diff - avg)) <= MAX_JITTER_MS, "timestamps must be evenly spaced"
    length_ms = 1000 * seconds
    assert timestamps.max() >= length_ms - 2 * avg, "no embeddings for the end of the audio"
    assert timestamps.max() <= length_ms, "timestamps beyond the end of the audio"
    return avg, timestamps


def test_hear_validator_checks(export_dir):
    model = hear.load_model(str(export_dir))  # as the HEAR runner calls it: the path, nothing else
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in VALIDATOR_SAMPLE_RATES
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    for num_audio, seconds in TIMESTAMP_CASES:
        avg, timestamps = _validate_timestamps(model, num_audio, seconds)
        assert avg <= SUGGESTED_HOP_MS  # the validator's recommendation, met with default arguments
        # The first stamp is the first patch column's true centre (16 frames: 87.5 ms), later than one
        # 50 ms hop; the validator only warns about that, and shifting stamps would misplace every one.
        assert timestamps.min() == pytest.approx(87.5)
    num_audio, seconds = SCENE_CASE
    scene = hear.get_scene_embeddings(_white_noise(num_audio, seconds, model.sample_rate), model)
    assert scene.dtype == torch.float32
    assert tuple(scene.shape) == (num_audio, model.scene_embedding_size)


def test_timestamps_are_patch_column_centres(export_dir):
    model = hear.load_model(str(export_dir), hop_ms=None)  # the checkpoint's own 16-frame stride
    _, timestamps = _validate_timestamps(model, 2, 4.0)
    # column k covers frames 16k .. 16k+15: samples 2560k .. 2560k+2799 at 16 kHz -> centre 160k + 87.5 ms
    expected = 87.5 + 160.0 * np.arange(timestamps.shape[1])
    np.testing.assert_allclose(timestamps[0], expected, atol=1e-3)
    assert timestamps.shape[1] == 25  # the last centre inside 4 s is 3927.5 ms


def test_default_hop_is_50_ms(export_dir):
    model = hear.load_model(str(export_dir))
    assert model.encoder.config.tstride == 5
    for num_audio, seconds in TIMESTAMP_CASES:
        avg, _ = _validate_timestamps(model, num_audio, seconds)
        assert avg == pytest.approx(SUGGESTED_HOP_MS, abs=1e-3)
    assert hear.load_model(str(export_dir), hop_ms=30).encoder.config.tstride == 3


def test_a_finer_checkpoint_stride_is_kept(tmp_path):
    model = hear.load_model(str(tiny_export(tmp_path, tstride=4)))
    assert model.encoder.config.tstride == 4


def test_long_audio_spans_windows_on_one_grid(export_dir):
    model = hear.load_model(str(export_dir), hop_ms=None, window_seconds=1.0)
    _, timestamps = _validate_timestamps(model, 1, 4.0)  # 4 windows of 6 columns, 25 columns inside
    np.testing.assert_allclose(np.diff(timestamps[0]), 160.0, atol=1e-3)


def test_load_model_errors():
    with pytest.raises(ValueError, match="needs model_file_path"):
        hear.load_model()
    with pytest.raises(ValueError, match="audio must be a tensor"):
        hear.get_scene_embeddings(torch.zeros(16000), None)
