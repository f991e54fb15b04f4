"""The inference path (gradients disabled): the fused multi-direction scan against the float64
reference, mixers and encoders against their training path, time reversal without flips, and
every inference entry point taking it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssamba.models import mamba
from ssamba.models.encoder import AudioMambaEncoder, preset_config
from ssamba.models.fused_scan import ScanDirection, fused_selective_scan_inference, fused_status
from ssamba.models.mamba import MambaMixer

pytestmark = pytest.mark.skipif(fused_status() is not None, reason=f"fused CPU kernels unavailable: {fused_status()}")


def reference_direction(d: ScanDirection, z: torch.Tensor | None) -> torch.Tensor:
    """Float64 per-step recurrence of one channel-last direction (delta = dt_low @ dt_weight.T)."""
    u, dt_low, B, C = (t.double() for t in (d.u, d.dt_low, d.B, d.C))
    delta = F.softplus(dt_low @ d.dt_weight.double().T + d.delta_bias.double())
    A, D = d.A.double(), d.D.double()
    batch, length, dim = u.shape
    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    out = torch.empty(batch, length, dim, dtype=torch.float64)
    steps = range(length - 1, -1, -1) if d.reverse else range(length)
    for t in steps:
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        out[:, t] = (h * C[:, t, None, :]).sum(-1) + D * u[:, t]
    return out if z is None else out * F.silu(z.double())


def random_direction(batch: int, length: int, dim: int, n_state: int, rank: int, reverse: bool, seed: int,
                     decay_scale: float = 1.0) -> ScanDirection:
    g = torch.Generator().manual_seed(seed)
    # x_proj-like output whose dt_low, B, C slices are strided views, as in the mixer
    x_dbl = torch.randn(batch, length, rank + 2 * n_state, generator=g)
    dt_low, B, C = x_dbl.split([rank, n_state, n_state], dim=-1)
    return ScanDirection(
        u=torch.randn(batch, length, dim, generator=g),
        dt_low=dt_low,
        dt_weight=torch.randn(dim, rank, generator=g) * rank**-0.5,
        A=-torch.rand(dim, n_state, generator=g) * decay_scale - 0.1,
        B=B,
        C=C,
        D=torch.randn(dim, generator=g),
        delta_bias=torch.randn(dim, generator=g) - 2.0,
        reverse=reverse,
    )


# float32 error bound: each output is a sum over N states of terms built from O(1) exp/softplus
# values, with a recurrence whose decays are < 1, so the relative error stays a few hundred ulp
# of the output's scale; 1e-4 of the largest output (about 800 float32 ulp) bounds it with room.
F32_TOLERANCE = 1e-4


def assert_close_to_reference(got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    scale = expected.abs().max().item() + 1e-12
    error = (got.double() - expected).abs().max().item()
    assert error <= tolerance * scale, f"max error {error:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, F32_TOLERANCE), (torch.float64, 1e-12)])
@pytest.mark.parametrize("length", [1, 17, 130])
@pytest.mark.parametrize("dim", [16, 37])
@pytest.mark.parametrize("reverse", [False, True])
def test_one_direction_matches_reference(dtype, tolerance, length, dim, reverse):
    d = random_direction(2, length, dim, 16, 3, reverse, seed=length + dim)
    d = ScanDirection(*(t.to(dtype) for t in d[:-1]), d.reverse)
    z = torch.randn(2, length, dim, dtype=dtype)
    assert_close_to_reference(fused_selective_scan_inference([d], z), reference_direction(d, z), tolerance)


@pytest.mark.parametrize("n_state", [16, 5])
def test_two_directions_are_summed_and_scaled(n_state):
    forward = random_direction(3, 41, 24, n_state, 2, False, seed=1)
    backward = random_direction(3, 41, 24, n_state, 2, True, seed=2)
    z = torch.randn(3, 82, 24)[:, ::2]  # a strided gate
    got = fused_selective_scan_inference([forward, backward], z, out_scale=0.5)
    expected = 0.5 * (reference_direction(forward, z) + reference_direction(backward, z))
    assert_close_to_reference(got, expected, F32_TOLERANCE)


def test_output_may_overwrite_the_first_directions_input():
    forward = random_direction(2, 33, 32, 16, 2, False, seed=5)
    backward = random_direction(2, 33, 32, 16, 2, True, seed=6)
    z = torch.randn(2, 33, 32)
    expected = fused_selective_scan_inference([forward, backward], z, out_scale=0.5)
    u = forward.u.clone()
    got = fused_selective_scan_inference([forward._replace(u=u), backward], z, out_scale=0.5, out=u)
    assert got.data_ptr() == u.data_ptr() and torch.equal(got, expected)
    with pytest.raises(RuntimeError, match="first direction only"):
        fused_selective_scan_inference([forward, backward], z, out=backward.u)


def test_large_decays_and_no_gate():
    d = random_direction(1, 200, 16, 16, 4, True, seed=3, decay_scale=60.0)
    d = d._replace(delta_bias=torch.full((16,), 3.0))  # dt around 3: decays down to exp(-180)
    got = fused_selective_scan_inference([d], None)
    assert torch.isfinite(got).all()
    assert_close_to_reference(got, reference_direction(d, None), F32_TOLERANCE)


def test_bad_inputs_are_named():
    d = random_direction(1, 5, 16, 4, 2, False, seed=4)
    with pytest.raises(ValueError, match="float32 or float64"):
        fused_selective_scan_inference([d._replace(u=d.u.half())], None)
    with pytest.raises(RuntimeError, match="dt_low"):
        fused_selective_scan_inference([d._replace(dt_low=torch.randn(1, 4, 2))], None)
    with pytest.raises(ValueError, match="at least one direction"):
        fused_selective_scan_inference([], None)


def _mixer(bimamba: str, seed: int = 0) -> MambaMixer:
    torch.manual_seed(seed)
    m = MambaMixer(32, d_state=16, bimamba=bimamba, scan_backend="fused")
    with torch.no_grad():  # backward-branch parameters unlike the forward ones
        for name, p in m.named_parameters():
            if "_b" in name or name == "D":
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("bimamba", ["none", "v1", "v2"])
@pytest.mark.parametrize("time_reversed", [False, True])
def test_mixer_inference_equals_training_path(bimamba, time_reversed):
    m = _mixer(bimamba)
    x = torch.randn(3, 37, 32)
    training = m(x, time_reversed)  # grad enabled: the autograd path
    assert training.requires_grad
    with torch.inference_mode():
        inference = m(x, time_reversed)
    assert_close_to_reference(inference, training.detach().double(), F32_TOLERANCE)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("bimamba", ["v1", "v2"])
def test_time_reversed_mixer_is_the_flipped_mixer(grad, bimamba):
    m = _mixer(bimamba, seed=1).double()
    x = torch.randn(2, 29, 32, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        assert torch.allclose(m(x, time_reversed=True), m(x.flip(1)).flip(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("preset", ["ssamba-tiny", "aum-tiny"])
def test_encoder_inference_equals_training_path(preset):
    torch.manual_seed(0)
    encoder = AudioMambaEncoder(preset_config(preset, depth=4, target_length=96)).eval()
    fbank = torch.randn(2, 96, 128)
    training = encoder(fbank)
    with torch.inference_mode():
        inference = encoder(fbank)
        states = encoder.hidden_states(fbank)
    assert_close_to_reference(inference, training.detach().double(), F32_TOLERANCE)
    assert torch.equal(states[-1], inference)


@pytest.fixture
def scan_calls(monkeypatch) -> dict[str, int]:
    """Counts the mixer's fused inference scans and its autograd (training) scans."""
    counts = {"inference": 0, "training": 0}
    inference, training = mamba.fused_selective_scan_inference, mamba.fused_selective_scan_channels_last

    def counted_inference(*args, **kwargs):
        counts["inference"] += 1
        return inference(*args, **kwargs)

    def counted_training(*args, **kwargs):
        counts["training"] += 1
        return training(*args, **kwargs)

    monkeypatch.setattr(mamba, "fused_selective_scan_inference", counted_inference)
    monkeypatch.setattr(mamba, "fused_selective_scan_channels_last", counted_training)
    return counts


def _tiny_encoder() -> AudioMambaEncoder:
    torch.manual_seed(0)
    return AudioMambaEncoder(preset_config("ssamba-tiny", depth=2, target_length=64, scan_backend="fused"))


def _windowed():
    from ssamba.interop.embed import WindowedEncoder

    encoder = _tiny_encoder()
    return WindowedEncoder(encoder, encoder.feature_config)


def test_embedding_and_hear_take_the_inference_path(scan_calls):
    from ssamba.hear import HearModel, get_scene_embeddings

    windowed = _windowed()
    windowed.embed_prepared([windowed.prepare(torch.randn(16000))])
    assert scan_calls == {"inference": 2, "training": 0}  # 2 layers, both directions in one call each
    get_scene_embeddings(torch.randn(1, 16000), HearModel(windowed))
    assert scan_calls["inference"] > 2 and scan_calls["training"] == 0


def test_probe_takes_the_inference_path(scan_calls):
    from ssamba.train.probe import Readout, load_embedder

    embedder = load_embedder("random:ssamba-tiny:depth=2", Readout(layer="all"), target_length=64)
    embedder.embed_windows(torch.randn(2, 64, 128))
    assert scan_calls == {"inference": 2, "training": 0}


def test_predict_takes_the_inference_path(scan_calls, tmp_path):
    import soundfile

    from ssamba.interop.predict import predict_file
    from ssamba.models.classifier import AudioMambaClassifier

    model = AudioMambaClassifier(_tiny_encoder(), 3, head="ssamba").eval()
    model.features = model.encoder.feature_config
    model.task, model.activation = "clip", "softmax"
    soundfile.write(tmp_path / "tone.wav", 0.3 * torch.randn(16000).numpy(), 16000)
    predict_file(model, tmp_path / "tone.wav", torch.device("cpu"))
    assert scan_calls["inference"] > 0 and scan_calls["training"] == 0


def test_finetune_evaluation_takes_the_inference_path(scan_calls):
    import contextlib
    from types import SimpleNamespace

    from ssamba.models.classifier import AudioMambaClassifier
    from ssamba.train.engine import DistInfo
    from ssamba.train.finetune import predict

    model = AudioMambaClassifier(_tiny_encoder(), 3, head="ssamba").train()
    dataset = [{"index": i, "fbank": torch.randn(64, 128), "target": torch.tensor(i % 3)} for i in range(4)]
    cfg = SimpleNamespace(data=SimpleNamespace(eval_batch_size=2, batch_size=2, num_workers=0), train=SimpleNamespace(loss="ce"))
    engine = SimpleNamespace(autocast=contextlib.nullcontext, input_dtype=torch.float32)
    predictions, skipped = predict(model, engine, dataset, cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert predictions.scores.shape == (4, 3) and skipped == 0 and model.training
    assert scan_calls == {"inference": 4, "training": 0}  # 2 batches x 2 layers
