"""An export folder explains itself: config.json (plain JSON) and the ONNX metadata carry the complete
input recipe, and the model card states it and documents config.json's schema."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import ssamba
from conftest import TINY_MEL_BINS, tiny_export
from ssamba.audio.fbank import fbank
from ssamba.interop.export import CONFIG_SCHEMA, export_encoder

FRAMES = 64


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("card"), frames=FRAMES)


def _features_from_recipe(spec: dict, wave: torch.Tensor) -> torch.Tensor:
    """The model input built only from config.json's `input` section (any Kaldi fbank would do)."""
    if spec["waveform_mean_removal"]:
        wave = wave - wave.mean()
    raw = fbank(wave, spec["sample_rate"], **spec["fbank_options"])
    frames = spec["target_length"]
    assert spec["length_rule"] == "zero-padded or cut at the end to target_length frames"
    raw = F.pad(raw, (0, 0, 0, max(0, frames - raw.shape[0])))[:frames]
    norm = spec["normalisation"]
    assert norm["formula"] == "(fbank - mean) / (2 * std)"
    return (raw - norm["mean"]) / (2 * norm["std"])


def test_config_json_holds_the_complete_input_recipe(export_dir):
    config = json.loads((export_dir / "config.json").read_text())
    spec = config["input"]
    assert spec["name"] == "fbank" and spec["dtype"] == "float32" and spec["shape"] == ["batch", FRAMES, TINY_MEL_BINS]
    options = spec["fbank_options"]
    assert {"window_type": "hanning", "htk_compat": True, "dither": 0.0, "frame_shift": 10.0, "frame_length": 25.0}.items() <= options.items()
    assert options["num_mel_bins"] == TINY_MEL_BINS and spec["waveform_mean_removal"] is True
    assert len(options) == 23  # every option of Kaldi's fbank, defaults included
    encoder = ssamba.load_encoder(export_dir)
    wave = torch.randn(12345, generator=torch.Generator().manual_seed(3)) * 0.2 + 0.1
    # White noise puts every mel bin far above the float32 noise floor, so the only difference, float32
    # rounding of the mean removal (ssamba also removes it after cutting the waveform to the frames it
    # keeps), stays near eps in the log domain: 1e-5 is ~100 eps, and a wrong option moves values by >1e-2.
    torch.testing.assert_close(_features_from_recipe(spec, wave), encoder.features(wave), rtol=0, atol=1e-5)
    assert config["outputs"]["embedding"]["shape"] == ["batch", encoder.config.embed_dim]


def test_model_card_states_the_recipe_and_the_schema(export_dir):
    card = (export_dir / "README.md").read_text()
    assert f"(batch, {FRAMES}, {TINY_MEL_BINS}), float32 -- not a waveform" in card
    for text in ("window hanning", "htk_compat True", "dither 0", "frame length 25 ms", "frame shift 10 ms",
                 "subtract the clip's mean", "(fbank - (-4.2677393)) / (2 * 4.5689974)", f"{FRAMES} frames"):
        assert text in card, text
    config = json.loads((export_dir / "config.json").read_text())
    for keys, _ in CONFIG_SCHEMA:  # every documented key exists, every top-level key is documented
        assert f"- `{keys}`:" in card
        for key in keys.split(", "):
            section, _, field = key.partition(".")
            assert section in config and (not field or field in config[section]), key
    documented = {key.split(".")[0] for keys, _ in CONFIG_SCHEMA for key in keys.split(", ")}
    assert set(config) == documented
    assert "## ONNX" not in card


def test_onnx_metadata_and_card_describe_the_input(tmp_path, export_dir):
    onnx = pytest.importorskip("onnx", reason="pip install 'ssamba[onnx]'")
    out = export_encoder(export_dir, tmp_path / "with-onnx", onnx=True)
    model = onnx.load(str(out / "model.onnx"))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    config = json.loads((out / "config.json").read_text())
    assert metadata["input"].startswith("fbank: normalised Kaldi log-mel filterbank")
    assert f"fixed length {FRAMES} frames" in metadata["input"]
    assert (metadata["target_length"], metadata["num_mel_bins"], metadata["sample_rate"]) == (str(FRAMES), str(TINY_MEL_BINS), "16000")
    assert json.loads(metadata["fbank_options"]) == config["input"]["fbank_options"]
    assert json.loads(metadata["normalisation"]) == config["input"]["normalisation"]
    assert json.loads(metadata["waveform_mean_removal"]) is True
    graph_input = model.graph.input[0]
    dims = [d.dim_value or d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "fbank" and dims[1:] == [FRAMES, TINY_MEL_BINS]
    card = (out / "README.md").read_text()
    assert "## ONNX (`model.onnx`)" in card
    assert f"input `fbank`: float32 (batch, {FRAMES}, {TINY_MEL_BINS}), the normalised filterbank above, not a waveform" in card
    assert metadata["ssamba_version"] == ssamba.__version__
