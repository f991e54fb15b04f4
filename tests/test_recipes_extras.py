"""Recipe extras: the s3prl upstream's contract, the DCASE complexity count, the DCASE device table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_export
from ssamba.models.complexity import DCASE_MAX_MACS, DCASE_MAX_PARAM_BYTES, complexity, dcase_input, search
from ssamba.models.encoder import AudioMambaEncoder, preset_config
from ssamba.recipes import device_table, macro_accuracy

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- s3prl upstream


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    from ssamba.interop.s3prl_upstream import ssamba_local

    export = tiny_export(tmp_path_factory.mktemp("s3prl"), frames=64, layer_pairing=False)
    return ssamba_local(ckpt=str(export)).eval()


def test_upstream_contract_hidden_states_and_rate(upstream, one_torch_thread):
    rate = upstream.get_downsample_rates("hidden_states")
    assert rate == 160 * 10  # 10 ms hop x time stride 10
    wavs = [torch.randn(16000), torch.randn(37_000)]  # unpadded, different lengths, 16 kHz
    with torch.no_grad():
        out = upstream(wavs)
    states = out["hidden_states"]
    assert len(states) == 2 and all(s.shape == states[0].shape for s in states)  # one per block, same shape
    batch, frames, dim = states[0].shape
    assert batch == 2 and frames == math.ceil(37_000 / rate) and dim == 2 * 32  # F' = (32 - 16) // 10 + 1 = 2 frequency rows, concatenated
    assert abs(frames - round(37_000 / rate)) < 5  # s3prl's Featurizer tolerance
    assert torch.equal(out["last_hidden_state"], states[-1])
    assert states[0][0, math.ceil(16000 / rate):].abs().sum() == 0  # the shorter item is zero-padded after its frames


def test_upstream_windows_do_not_change_a_single_window(upstream, one_torch_thread):
    wav = torch.randn(16000)
    with torch.no_grad():
        alone = upstream([wav])["hidden_states"][-1][0]
        batched = upstream([wav, torch.randn(24_000)])["hidden_states"][-1][0, : alone.shape[0]]
    torch.testing.assert_close(alone, batched, rtol=0, atol=0)


def test_upstream_against_s3prl_featurizer(upstream, one_torch_thread):
    interfaces = pytest.importorskip("s3prl.upstream.interfaces", reason="s3prl not installed (pip install 'ssamba[s3prl]')")
    featurizer = interfaces.Featurizer(upstream, upstream_device="cpu")  # runs the upstream on 1 s of noise
    assert featurizer.downsample_rate == 1600
    wavs = [torch.randn(16000), torch.randn(37_000)]
    with torch.no_grad():
        features = featurizer(wavs, upstream(wavs))
    assert [f.shape[0] for f in features] == [round(16000 / 1600), round(37_000 / 1600)]


def test_hubconf_exposes_the_entries():
    namespace: dict[str, object] = {}
    exec(compile((ROOT / "hubconf.py").read_text(), "hubconf.py", "exec"), namespace)
    assert callable(namespace["ssamba_local"]) and callable(namespace["ssamba_custom"])
    with pytest.raises(ValueError, match="needs a checkpoint"):
        namespace["ssamba_local"](ckpt=None, model_config=None, refresh=False)


# ------------------------------------------------------------------------------------- complexity


def test_projection_and_patch_macs_match_torch_flop_counter(one_torch_thread):
    config = preset_config("ssamba-tiny", embed_dim=32, depth=4, target_length=100, scan_backend="ref")
    encoder = AudioMambaEncoder(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(torch.randn(1, 100, 128))
    counts = {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}
    result = complexity(config, classes=10)
    assert counts["aten.mm"] == result.projections
    assert counts["aten.convolution"] == result.patch_embed
    assert result.parameters == sum(p.numel() for p in encoder.parameters()) + 32 * 10 + 10 + 2 * 32


def test_ssamba_tiny_exceeds_dcase_limits_and_the_search_finds_configs_that_fit():
    tiny = complexity(dcase_input(preset_config("ssamba-tiny")), classes=10)
    assert tiny.macs > 10 * DCASE_MAX_MACS and tiny.scan > 0.1 * tiny.macs  # the scan is a large share
    assert tiny.parameter_bytes("fp16") > 100 * DCASE_MAX_PARAM_BYTES
    fitting = search(classes=10, seconds=1.0, dtype="fp16")
    assert fitting
    for config, result in fitting[:3]:
        assert result.macs <= DCASE_MAX_MACS and result.parameters * 2 <= DCASE_MAX_PARAM_BYTES
        assert result.parameters == complexity(config, 10).parameters


# -------------------------------------------------------------------------------- DCASE device table


def test_macro_accuracy_and_device_table():
    true = ["bus", "bus", "bus", "park"]
    predicted = ["bus", "park", "park", "park"]
    assert macro_accuracy(true, predicted) == pytest.approx((1 / 3 + 1) / 2)
    table = device_table(["a", "s1", "a", "b"], true, predicted)
    header, values = table.splitlines()[1:]
    assert header.split() == ["all", "a", "b", "s1"]
    assert [float(v) for v in values.split()] == pytest.approx([66.67, 50.0, 100.0, 0.0], abs=0.01)
