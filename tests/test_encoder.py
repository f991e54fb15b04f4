"""Mixer, block and encoder: numerics against a float64 reference, both directions, counts, order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssamba.models.classifier import AudioMambaClassifier
from ssamba.models.encoder import AudioMambaEncoder, EncoderConfig, available_presets, preset_config
from ssamba.models.mamba import MambaMixer
from ssamba.models.scan import backend_status

CPU_BACKENDS = [name for name in ("ref", "chunked", "fused") if backend_status().get(name) is None]


def _naive_scan(u, dt, A, B, C, D, z):
    """Explicit per-time-step recurrence (float64), independent of ssamba.models.scan."""
    batch, dim, length = u.shape
    h = torch.zeros(batch, dim, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[..., t])
    return torch.stack(ys, -1) * F.silu(z)


def _naive_branch(x, z, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, dt_rank, d_state):
    length = x.shape[-1]
    xc = F.silu(F.conv1d(F.pad(x, (conv_w.shape[-1] - 1, 0)), conv_w, conv_b, groups=x.shape[1]))[..., :length]
    x_dbl = torch.einsum("bel,re->blr", xc, x_proj_w)
    dt_low, B, C = x_dbl.split([dt_rank, d_state, d_state], dim=-1)
    dt = F.softplus(torch.einsum("blr,er->bel", dt_low, dt_w) + dt_b[:, None])
    return _naive_scan(xc, dt, -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2), D, z)


def _naive_mixer(m: MambaMixer, hidden):
    """Float64 re-derivation of the v2 (Bi-Bi) mixer from its parameters."""
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    xz = torch.einsum("bld,ed->bel", hidden, p["in_proj.weight"])
    x, z = xz.chunk(2, dim=1)
    args = (m.dt_rank, m.d_state)
    y = _naive_branch(x, z, p["conv1d.weight"], p["conv1d.bias"], p["x_proj.weight"], p["dt_proj.weight"], p["dt_proj.bias"], p["A_log"], p["D"], *args)
    y_b = _naive_branch(
        x.flip(-1), z.flip(-1), p["conv1d_b.weight"], p["conv1d_b.bias"], p["x_proj_b.weight"], p["dt_proj_b.weight"], p["dt_proj_b.bias"], p["A_b_log"], p["D_b"], *args
    )
    y = (y + y_b.flip(-1)) / 2
    return torch.einsum("bel,de->bld", y, p["out_proj.weight"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("length", [1, 7, 33])
def test_v2_mixer_matches_float64_reference(backend, length):
    torch.manual_seed(0)
    m = MambaMixer(16, d_state=8, bimamba="v2", scan_backend=backend)
    with torch.no_grad():  # non-trivial backward-branch parameters
        for name, p in m.named_parameters():
            if name.endswith("_b.weight") or name.endswith("_b.bias") or name == "D_b":
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, length, 16)
    expected = _naive_mixer(m, x.double())
    got = m(x)
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-5), (got.double() - expected).abs().max()


def _future_influence(m: MambaMixer, length: int = 12) -> float:
    """How much the output at t=0 depends on the input at the last step."""
    x = torch.randn(1, length, m.d_model, requires_grad=True)
    m(x)[0, 0].sum().backward()
    return x.grad[0, -1].abs().max().item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bimamba", ["v1", "v2"])
def test_bidirectional_mixers_use_both_directions(backend, bimamba):
    torch.manual_seed(1)
    m = MambaMixer(16, bimamba=bimamba, scan_backend=backend)
    assert _future_influence(m) > 1e-6
    m(torch.randn(2, 9, 16)).square().sum().backward()
    backward_params = [n for n, p in m.named_parameters() if "_b" in n]
    assert backward_params
    for name in backward_params:
        assert m.get_parameter(name).grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unidirectional_mixer_is_causal(backend):
    torch.manual_seed(2)
    m = MambaMixer(16, bimamba="none", scan_backend=backend)
    assert _future_influence(m) == 0.0


def test_v1_backward_branch_shares_forward_projections():
    m = MambaMixer(16, bimamba="v1")
    names = {n for n, _ in m.named_parameters()}
    assert "A_b_log" in names
    assert not {"conv1d_b.weight", "x_proj_b.weight", "dt_proj_b.weight", "D_b"} & names


# exact parameter counts (see README, "Model sizes"); AuM counts include the 527-class head
PARAMETER_COUNTS = {
    "ssamba-tiny": 6_922_176,
    "ssamba-small": 25_345_920,
    "ssamba-base": 96_698_112,
}
AUM_WITH_HEAD = {
    ("aum-base", "v1"): 92_107_535,
    ("aum-small", "v2"): 25_539_215,
    ("aum-tiny", "v2"): 7_019_087,
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", list(PARAMETER_COUNTS))
def test_ssamba_parameter_counts(preset):
    assert _count(AudioMambaEncoder(preset_config(preset))) == PARAMETER_COUNTS[preset]


@pytest.mark.parametrize(("preset", "bimamba"), list(AUM_WITH_HEAD))
def test_aum_parameter_counts_with_audioset_head(preset, bimamba):
    model = AudioMambaClassifier(AudioMambaEncoder(preset_config(preset, bimamba=bimamba)), 527)
    assert _count(model) == AUM_WITH_HEAD[(preset, bimamba)]


def _small(preset: str = "ssamba-tiny", **overrides) -> AudioMambaEncoder:
    config = dict(embed_dim=32, depth=4, target_length=64) | overrides
    return AudioMambaEncoder(preset_config(preset, **config))


def test_tokens_are_frequency_major():
    enc = _small(fshape=16, tshape=16, fstride=16, tstride=16)
    f_patches, t_patches = enc.grid
    assert (f_patches, t_patches) == (8, 4)
    fbank = torch.zeros(1, 64, 128)
    fbank[0, 2 * 16 : 3 * 16, 5 * 16 : 6 * 16] = 1.0  # time patch 2, frequency row 5
    with torch.no_grad():
        enc.patch_embed.proj.bias.zero_()
        emb = enc.patchify(fbank)
    nonzero = emb.abs().sum(-1).nonzero()[:, 1].tolist()
    assert nonzero == [5 * t_patches + 2]


def test_overlapping_patch_grid():
    enc = _small(target_length=1024, fstride=10, tstride=10, depth=2)
    assert enc.grid == (12, 101)
    assert enc.pos_embed.shape == (1, 1 + 12 * 101, 32)


def test_layer_pairing_doubles_the_residual_stream():
    enc = _small(depth=6, drop_path_rate=0.0)
    with torch.no_grad():
        for layer in enc.layers:
            layer.mixer.out_proj.weight.zero_()
    tokens = torch.randn(2, 1 + enc.num_patches, 32)
    hidden, residual = enc._run_layers(tokens)
    assert torch.count_nonzero(hidden) == 0
    torch.testing.assert_close(residual, tokens * 2**3)
    enc.config.layer_pairing = False
    _, residual = enc._run_layers(tokens)
    torch.testing.assert_close(residual, tokens)


def test_layer_pairing_second_layer_sees_reversed_sequence():
    enc = _small(depth=2, drop_path_rate=0.0)
    tokens = torch.randn(1, 1 + enc.num_patches, 32)
    hidden, _ = enc._run_layers(tokens)
    h_f, _ = enc.layers[0](tokens)
    h_b, _ = enc.layers[1](tokens.flip(1))
    torch.testing.assert_close(hidden, h_f + h_b.flip(1))


def test_double_final_norm():
    enc = _small(depth=2, drop_path_rate=0.0).eval()
    fbank = torch.randn(2, 64, 128)
    tokens = torch.cat([enc.cls_token.expand(2, -1, -1), enc.patchify(fbank)], 1) + enc.pos_embed
    hidden, residual = enc._run_layers(tokens)
    once = enc.norm_f(residual + hidden)
    torch.testing.assert_close(enc(fbank), enc.norm_f(once))
    enc.config.double_final_norm = False
    torch.testing.assert_close(enc(fbank), once)


def test_cls_positions_and_pooling():
    fbank = torch.randn(2, 64, 128)
    head = _small(drop_path_rate=0.0).eval()
    out = head(fbank)
    assert out.shape == (2, 33, 32) and head.cls_index == 0
    torch.testing.assert_close(head.embed(fbank), out[:, 1:].mean(1))

    middle = _small("aum-tiny").eval()
    out = middle(fbank)
    assert middle.cls_index == 16
    torch.testing.assert_close(middle.embed(fbank), out[:, 16])
    assert middle.patch_tokens(out).shape == (2, 32, 32)

    none = _small(cls_position="none").eval()
    assert none(fbank).shape == (2, 32, 32) and none.cls_token is None


def test_middle_cls_gets_the_first_position_embedding():
    enc = _small("aum-tiny", depth=2).eval()
    with torch.no_grad():
        enc.cls_token.zero_()
        enc.pos_embed.zero_()
        enc.pos_embed[0, 0] = 1.0
    captured = {}
    enc.layers[0].register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    enc.forward_tokens(torch.zeros(1, enc.num_patches, 32))
    x = captured["x"][0]
    assert torch.all(x[enc.cls_index] == 1.0)
    assert x.abs().sum() == 32


def test_drop_path_schedule_is_shifted_by_one_layer():
    enc = AudioMambaEncoder(preset_config("ssamba-tiny", embed_dim=16, depth=24, target_length=16))
    rates = [layer.drop_path.p for layer in enc.layers]
    assert rates[0] == rates[1] == 0.0
    assert rates[2] == pytest.approx(0.1 / 23)
    assert rates[-1] == pytest.approx(0.1 * 22 / 23)
    assert enc.drop_path_f.p == 0.1


def test_initialisation():
    torch.manual_seed(0)
    enc = _small(embed_dim=64, depth=4)
    m = enc.layers[0].mixer
    for A_log in (m.A_log, m.A_b_log):
        torch.testing.assert_close(torch.exp(A_log), torch.arange(1.0, 17).expand(128, 16))
    torch.testing.assert_close(m.D, torch.ones(128))
    for dt_proj in (m.dt_proj, m.dt_proj_b):
        dt = F.softplus(dt_proj.bias)
        assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7
        assert dt_proj.weight.abs().max() <= m.dt_rank**-0.5
    bound = 1 / math.sqrt(m.d_inner) / math.sqrt(enc.config.depth)  # kaiming-uniform(a=sqrt 5) / sqrt(depth)
    w = m.out_proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert 0.015 < enc.pos_embed.std() < 0.025


def test_rmsnorm_and_layernorm_keys():
    assert "layers.0.norm.bias" in _small().state_dict()
    keys = _small("aum-tiny").state_dict()
    assert "layers.0.norm.weight" in keys and "layers.0.norm.bias" not in keys


def test_gradients_reach_every_parameter():
    enc = _small(drop_path_rate=0.0)
    enc(torch.randn(2, 64, 128)).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bimamba": "v3"}, "bimamba must be one of"),
        ({"depth": 3}, "layer_pairing needs an even depth"),
        ({"embed_dim": 0}, "embed_dim must be a positive integer"),
        ({"cls_position": "none", "pool": "cls"}, "needs a CLS token"),
        ({"fshape": 256}, "larger than the input"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        preset_config("ssamba-tiny", **changes)


def test_config_dict_round_trip_and_unknown_keys():
    config = preset_config("aum-small")
    assert EncoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown EncoderConfig field"):
        EncoderConfig.from_dict({"embed_dim": 8, "widht": 3})
    with pytest.raises(ValueError, match="unknown encoder preset"):
        preset_config("ssamba-huge")
    assert set(available_presets()) >= {"ssamba-tiny", "ssamba-small", "ssamba-base", "aum-tiny", "aum-small", "aum-base"}


def test_input_shape_errors():
    enc = _small()
    with pytest.raises(ValueError, match="expected 128 mel bins"):
        enc(torch.randn(1, 64, 80))
    with pytest.raises(ValueError, match="expected 64 frames"):
        enc(torch.randn(1, 100, 128))
    with pytest.raises(ValueError, match=r"\(batch, frames, mel_bins\)"):
        enc(torch.randn(64, 128))


def test_loaded_encoder_computes_the_features_its_checkpoint_expects(tmp_path):
    from ssamba.audio.fbank import FeatureConfig
    from ssamba.interop.checkpoints import Checkpoint, load_encoder
    from ssamba.interop.export import write_export

    config = preset_config("ssamba-tiny", embed_dim=32, depth=2, num_mel_bins=32, target_length=48)
    features = FeatureConfig(num_mel_bins=32, target_length=48, mean=-6.5, std=5.25)
    checkpoint = Checkpoint("ssamba-train", tmp_path / "x.pt", config, AudioMambaEncoder(config).state_dict(), features)
    encoder = load_encoder(write_export(checkpoint, tmp_path / "export"))
    assert encoder.feature_config == features
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    torch.testing.assert_close(encoder.features(wave), features.features(wave), rtol=0, atol=0)
    assert encoder.features(wave).shape == (48, 32)
    # another rate is resampled to the checkpoint's 16 kHz first: 1 s of 8 kHz audio gives 1 s of frames
    slow = encoder.features(wave[::2], sample_rate=8000)
    assert slow.shape == (48, 32) and torch.isfinite(slow).all()
    assert encoder.embed(encoder.features(wave)[None]).shape == (1, 32)
    with pytest.raises(ValueError, match="feature_config gives 1024 frames x 128 mel bins, the encoder expects 48 x 32"):
        AudioMambaEncoder(config, FeatureConfig())
