"""ONNX export of the encoder: onnxruntime output equals PyTorch's within 1e-4 on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssamba
from conftest import tiny_export
from ssamba.cli import main as cli_main
from ssamba.interop.onnx import export_copy, prefix_scan
from ssamba.models.encoder import AudioMambaEncoder, preset_config

TOLERANCE = 1e-4
ONNX_HINT = "pip install 'ssamba[onnx]'"


@pytest.fixture()
def ort():
    pytest.importorskip("onnx", reason=ONNX_HINT)
    return pytest.importorskip("onnxruntime", reason=ONNX_HINT)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
def test_prefix_scan_matches_sequential_recurrence(length):
    gen = torch.Generator().manual_seed(length)
    batch, dim, n_state = 2, 6, 4
    u, z = (torch.randn(batch, dim, length, generator=gen, dtype=torch.float64) for _ in range(2))
    delta = F.softplus(torch.randn(batch, dim, length, generator=gen, dtype=torch.float64))
    A = -torch.rand(dim, n_state, generator=gen, dtype=torch.float64) * 4
    B, C = (torch.randn(batch, n_state, length, generator=gen, dtype=torch.float64) for _ in range(2))
    D = torch.randn(dim, generator=gen, dtype=torch.float64)
    h = torch.zeros(batch, dim, n_state, dtype=torch.float64)
    expected = []
    for t in range(length):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        expected.append(((h * C[:, None, :, t]).sum(-1) + D * u[..., t]) * F.silu(z[..., t]))
    assert torch.allclose(prefix_scan(u, delta, A, B, C, D, z), torch.stack(expected, -1), rtol=1e-12, atol=1e-12)


def test_export_copy_computes_the_same_encoder():
    torch.manual_seed(0)
    encoder = AudioMambaEncoder(preset_config("aum-base", embed_dim=32, depth=2, num_mel_bins=32, target_length=80)).eval()
    fbank = torch.randn(2, 80, 32)
    with torch.no_grad():
        assert torch.allclose(export_copy(encoder)(fbank), encoder(fbank), atol=1e-5)


def _export(directory, preset, **overrides):
    return tiny_export(directory, preset, **overrides)


def _run_onnx(ort, path, fbank):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["fbank"]
    return session.run(["tokens", "embedding"], {"fbank": fbank.numpy()})


@pytest.mark.parametrize("preset", ["ssamba-tiny", "aum-small"])
def test_onnx_matches_pytorch(tmp_path, ort, preset):
    source = _export(tmp_path, preset)
    out = tmp_path / "onnx-export"
    assert cli_main(["export", str(source), str(out), "--onnx", "--target-length", "48", "--tstride", "8"]) == 0
    encoder = ssamba.load_encoder(out)
    assert encoder.grid == (2, 5)
    fbank = torch.randn(3, 48, 32, generator=torch.Generator().manual_seed(1))  # batch 3: the batch axis is dynamic
    tokens, embedding = _run_onnx(ort, out / "model.onnx", fbank)
    with torch.no_grad():
        expected_tokens = encoder(fbank)
        expected_embedding = encoder.embed(fbank)
    np.testing.assert_allclose(tokens, expected_tokens.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(embedding, expected_embedding.numpy(), atol=TOLERANCE, rtol=0)


def test_reexport_without_onnx_removes_stale_graph(tmp_path, ort):
    source = _export(tmp_path, "ssamba-tiny")
    out = tmp_path / "out"
    cli_main(["export", str(source), str(out), "--onnx"])
    assert (out / "model.onnx").is_file()
    cli_main(["export", str(source), str(out), "--overwrite"])
    assert not (out / "model.onnx").exists()
