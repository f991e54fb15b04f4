"""Checkpoint interop: official SSAMBA/AuM layouts against float64 re-derivations, adaptation, export round trip."""

from __future__ import annotations

import fractions
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import ssamba
from ssamba.audio.fbank import FeatureConfig
from ssamba.cli import main as cli_main
from ssamba.interop.checkpoints import CheckpointError, adapt_pos_embed, read_checkpoint
from ssamba.interop.export import export_encoder
from ssamba.models.encoder import AudioMambaEncoder, preset_config
from ssamba.models.masked import MaskedPatchModel, ObjectiveConfig

DIM, DEPTH, D_STATE, D_CONV, PATCH = 32, 2, 8, 4, 16
D_INNER, DT_RANK = 2 * DIM, math.ceil(DIM / 16)
MEL, FRAMES = 48, 64  # pretraining input: 3 x 4 = 12 patches
HEAD_CLASSES = 10
EPS = 1e-5


# ------------------------------------------------------------------------- official-layout files


def _mixer_tensors(gen: torch.Generator, bimamba: str) -> dict[str, torch.Tensor]:
    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen) * scale

    def a_log():
        return torch.log(torch.arange(1, D_STATE + 1, dtype=torch.float32)).repeat(D_INNER, 1) + rand(D_INNER, D_STATE, scale=0.1)

    def dt_bias():
        dt = torch.empty(D_INNER).uniform_(1e-3, 0.1, generator=gen)
        return dt + torch.log(-torch.expm1(-dt))

    branch = lambda suffix: {
        f"conv1d{suffix}.weight": rand(D_INNER, 1, D_CONV),
        f"conv1d{suffix}.bias": rand(D_INNER, scale=0.1),
        f"x_proj{suffix}.weight": rand(DT_RANK + 2 * D_STATE, D_INNER, scale=0.2),
        f"dt_proj{suffix}.weight": rand(D_INNER, DT_RANK, scale=0.5),
        f"dt_proj{suffix}.bias": dt_bias(),
    }
    tensors = {"in_proj.weight": rand(2 * D_INNER, DIM, scale=0.2), **branch(""), "A_log": a_log(), "D": 1 + rand(D_INNER, scale=0.1), "out_proj.weight": rand(DIM, D_INNER, scale=0.2)}
    if bimamba in ("v1", "v2"):
        tensors["A_b_log"] = a_log()
    if bimamba == "v2":
        tensors |= branch("_b") | {"D_b": 1 + rand(D_INNER, scale=0.1)}
    return tensors


def _encoder_tensors(gen: torch.Generator, n_tokens: int, norm: str, bimamba: str) -> dict[str, torch.Tensor]:
    def norm_tensors(prefix):
        out = {f"{prefix}.weight": 1 + torch.randn(DIM, generator=gen) * 0.1}
        if norm == "layernorm":
            out[f"{prefix}.bias"] = torch.randn(DIM, generator=gen) * 0.1
        return out

    tensors = {
        "patch_embed.proj.weight": torch.randn(DIM, 1, PATCH, PATCH, generator=gen) * 0.05,
        "patch_embed.proj.bias": torch.randn(DIM, generator=gen) * 0.1,
        "pos_embed": torch.randn(1, n_tokens, DIM, generator=gen) * 0.5,
        "cls_token": torch.randn(1, 1, DIM, generator=gen) * 0.5,
        **norm_tensors("norm_f"),
    }
    for i in range(DEPTH):
        tensors |= {f"layers.{i}.mixer.{k}": v for k, v in _mixer_tensors(gen, bimamba).items()}
        tensors |= {f"layers.{i}.{k}": v for k, v in norm_tensors("norm").items()}
    return tensors


def official_ssamba_state(seed: int = 0, norm: str = "layernorm") -> dict[str, torch.Tensor]:
    """A random checkpoint in the released SSAMBA layout (DataParallel prefix, Vim names, heads, p_input_*)."""
    gen = torch.Generator().manual_seed(seed)
    n_patches = (MEL // PATCH) * (FRAMES // PATCH)
    state = {f"v.{k}": v for k, v in _encoder_tensors(gen, 1 + n_patches, norm, "v2").items()}
    state["v.head.weight"] = torch.randn(HEAD_CLASSES, DIM, generator=gen)
    state["v.head.bias"] = torch.randn(HEAD_CLASSES, generator=gen)
    for head in ("cpredlayer", "gpredlayer"):
        state[f"{head}.0.weight"] = torch.randn(DIM, DIM, generator=gen) * 0.2
        state[f"{head}.0.bias"] = torch.randn(DIM, generator=gen) * 0.1
        state[f"{head}.2.weight"] = torch.randn(PATCH * PATCH, DIM, generator=gen) * 0.2
        state[f"{head}.2.bias"] = torch.randn(PATCH * PATCH, generator=gen) * 0.1
    state["mask_embed"] = torch.randn(1, 1, DIM, generator=gen)
    state["p_input_fdim"] = torch.tensor(MEL)
    state["p_input_tdim"] = torch.tensor(FRAMES)
    return {f"module.{k}": v for k, v in state.items()}


def aum_state(seed: int = 0, bimamba: str = "v1", t_patches: int = 4) -> dict[str, torch.Tensor]:
    """A random AuM classifier state dict (RMSNorm, pos_embed.pos_embed, classification head)."""
    gen = torch.Generator().manual_seed(seed)
    state = _encoder_tensors(gen, 1 + 8 * t_patches, "rmsnorm", bimamba)
    state["pos_embed.pos_embed"] = state.pop("pos_embed")
    state["head.weight"] = torch.randn(HEAD_CLASSES, DIM, generator=gen)
    state["head.bias"] = torch.randn(HEAD_CLASSES, generator=gen)
    return state


@pytest.fixture()
def official_file(tmp_path):
    path = tmp_path / "official.pth"
    torch.save(official_ssamba_state(), path)
    return path


# --------------------------------------------------------------- float64 reference of the originals


def _ref_norm(x, p, prefix):
    if f"{prefix}.bias" in p:
        return F.layer_norm(x, (x.shape[-1],), p[f"{prefix}.weight"], p[f"{prefix}.bias"], EPS)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * p[f"{prefix}.weight"]


def _ref_scan(u, dt, A, B, C, D, z):
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[..., t])
    return torch.stack(ys, -1) * F.silu(z)


def _ref_conv(x, p, name):
    length = x.shape[-1]
    return F.silu(F.conv1d(F.pad(x, (D_CONV - 1, 0)), p[f"{name}.weight"], p[f"{name}.bias"], groups=x.shape[1]))[..., :length]


def _ref_ssm_inputs(xc, p, sfx):
    x_dbl = torch.einsum("bel,re->brl", xc, p[f"x_proj{sfx}.weight"])
    dt_low, B, C = x_dbl.split([DT_RANK, D_STATE, D_STATE], dim=1)
    dt = F.softplus(torch.einsum("brl,er->bel", dt_low, p[f"dt_proj{sfx}.weight"]) + p[f"dt_proj{sfx}.bias"][:, None])
    return dt, B, C


def _ref_mixer(h, p):
    """Vim's Mamba mixer (none / v1 / v2 with divide-out) from a layer's tensors."""
    x, z = torch.einsum("bld,ed->bel", h, p["in_proj.weight"]).chunk(2, dim=1)
    xc = _ref_conv(x, p, "conv1d")
    dt, B, C = _ref_ssm_inputs(xc, p, "")
    y = _ref_scan(xc, dt, -torch.exp(p["A_log"]), B, C, p["D"], z)
    if "conv1d_b.weight" in p:
        xb = _ref_conv(x.flip(-1), p, "conv1d_b")
        dtb, Bb, Cb = _ref_ssm_inputs(xb, p, "_b")
        y = (y + _ref_scan(xb, dtb, -torch.exp(p["A_b_log"]), Bb, Cb, p["D_b"], z.flip(-1)).flip(-1)) / 2
    elif "A_b_log" in p:
        fl = lambda t: t.flip(-1)
        y = y + _ref_scan(fl(xc), fl(dt), -torch.exp(p["A_b_log"]), fl(B), fl(C), p["D"], fl(z)).flip(-1)
    return torch.einsum("bel,de->bld", y, p["out_proj.weight"])


def _ref_block(h, r, p, i):
    r = h if r is None else r + h
    layer = {k[len(f"layers.{i}.mixer.") :]: v for k, v in p.items() if k.startswith(f"layers.{i}.mixer.")}
    return _ref_mixer(_ref_norm(r, p, f"layers.{i}.norm"), layer), r


def _ref_patches(p, fbank, fstride, tstride):
    image = fbank.double().unsqueeze(1).transpose(2, 3)
    return F.conv2d(image, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=(fstride, tstride)).flatten(2).transpose(1, 2)


def reference_ssamba(official, fbank, fstride=PATCH, tstride=PATCH, pos_embed=None, mask_ids=None):
    """SSAMBA's AMBAModel token features (float64), straight from the official keys."""
    p = {k[len("module.v.") :]: v.double() for k, v in official.items() if k.startswith("module.v.")}
    patches = _ref_patches(p, fbank, fstride, tstride)
    if mask_ids is not None:
        for b in range(patches.shape[0]):
            patches[b, mask_ids[b]] = official["module.mask_embed"].double()[0, 0]
    cls = p["cls_token"].expand(patches.shape[0], -1, -1)
    hidden = torch.cat([cls, patches], 1) + (p["pos_embed"] if pos_embed is None else pos_embed.double())
    residual = None
    for i in range(0, DEPTH, 2):  # Vim's if_bidirectional layer pairs
        hf, rf = _ref_block(hidden, residual, p, i)
        hb, rb = _ref_block(hidden.flip(1), None if residual is None else residual.flip(1), p, i + 1)
        hidden, residual = hf + hb.flip(1), rf + rb.flip(1)
    normed = _ref_norm(residual + hidden, p, "norm_f")
    return _ref_norm(normed, p, "norm_f")  # AMBAModel applies norm_f a second time


def reference_aum(state, fbank):
    """AuM's token features (float64): middle CLS, sequential layers, one final RMSNorm."""
    p = {("pos_embed" if k == "pos_embed.pos_embed" else k): v.double() for k, v in state.items()}
    patches = _ref_patches(p, fbank, PATCH, PATCH)
    n = patches.shape[1]
    tokens = torch.cat([p["cls_token"].expand(patches.shape[0], -1, -1), patches], 1) + p["pos_embed"]
    hidden = torch.cat([tokens[:, 1 : 1 + n // 2], tokens[:, :1], tokens[:, 1 + n // 2 :]], 1)
    residual = None
    for i in range(DEPTH):
        hidden, residual = _ref_block(hidden, residual, p, i)
    return _ref_norm(residual + hidden, p, "norm_f")


def _fbank(batch=2, frames=FRAMES, mel=MEL, seed=1):
    return torch.randn(batch, frames, mel, generator=torch.Generator().manual_seed(seed))


def _close(got, expected, tol=2e-5):
    err = (got.double() - expected).abs().max().item()
    assert err < tol * max(1.0, expected.abs().max().item()), err


# ------------------------------------------------------------------------------------ official files


def test_official_checkpoint_reproduces_ssamba_computation(official_file):
    encoder = ssamba.load_encoder(official_file)
    cfg = encoder.config
    assert (cfg.embed_dim, cfg.depth, cfg.d_state, cfg.norm, cfg.bimamba) == (DIM, DEPTH, D_STATE, "layernorm", "v2")
    assert (cfg.num_mel_bins, cfg.target_length, cfg.fstride, cfg.tstride) == (MEL, FRAMES, PATCH, PATCH)
    assert not encoder.training
    fbank = _fbank()
    expected = reference_ssamba(official_ssamba_state(), fbank)
    with torch.no_grad():
        tokens = encoder(fbank)
        embedding = encoder.embed(fbank)
    assert tokens.shape == (2, 13, DIM)
    _close(tokens, expected)
    _close(embedding, expected[:, 1:].mean(1))  # mean over patch tokens, CLS excluded


def test_rmsnorm_checkpoint_is_detected_and_computed_as_rmsnorm(tmp_path):
    state = official_ssamba_state(seed=3, norm="rmsnorm")
    torch.save(state, tmp_path / "rms.pth")
    encoder = ssamba.load_encoder(tmp_path / "rms.pth")
    assert encoder.config.norm == "rmsnorm"
    fbank = _fbank(seed=4)
    with torch.no_grad():
        _close(encoder(fbank), reference_ssamba(state, fbank))


def test_checkpoint_read_accounts_for_every_tensor(official_file):
    ckpt = read_checkpoint(official_file)
    assert ckpt.layout == "ssamba-official"
    assert set(ckpt.unused) == {"v.head.weight", "v.head.bias", "p_input_fdim", "p_input_tdim"}
    assert set(ckpt.head_state) == {f"{h}.{i}.{w}" for h in ("cpredlayer", "gpredlayer") for i in (0, 2) for w in ("weight", "bias")} | {"mask_embed"}
    accounted = len(ckpt.encoder_state) + len(ckpt.head_state) + len(ckpt.unused)
    assert accounted == len(official_ssamba_state())


def test_unmapped_tensor_is_an_error_naming_it(tmp_path):
    state = official_ssamba_state()
    state["module.v.layers.0.mixer.gamma"] = torch.ones(DIM)
    state["module.v.extra_scale"] = torch.ones(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"layer 1 lacks tensors \['mixer.gamma'\] that other layers have"):
        ssamba.load_encoder(tmp_path / "extra.pth")
    del state["module.v.layers.0.mixer.gamma"]
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unmapped: extra_scale"):
        ssamba.load_encoder(tmp_path / "extra.pth")


def test_bad_files_give_clear_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes.txt: not a checkpoint, or a truncated or corrupt one"):
        ssamba.load_encoder(text)
    torch.save({"conv.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint layout .* first keys: conv.weight, fc.bias"):
        ssamba.load_encoder(tmp_path / "other.pt")
    mixed = official_ssamba_state()
    mixed["v.stray"] = mixed.pop("module.v.cls_token")
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="some keys carry the DataParallel prefix"):
        ssamba.load_encoder(tmp_path / "mixed.pth")
    no_size = {k: v for k, v in official_ssamba_state().items() if k != "module.p_input_tdim"}
    torch.save(no_size, tmp_path / "nosize.pth")
    with pytest.raises(CheckpointError, match="lacks 'module.p_input_tdim'"):
        ssamba.load_encoder(tmp_path / "nosize.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ssamba.load_encoder(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="neither an export directory"):
        ssamba.load_encoder(tmp_path)


def test_input_errors_name_the_problem(official_file):
    encoder = ssamba.load_encoder(official_file)
    with pytest.raises(ValueError, match=f"expected {MEL} mel bins \\(last axis\\), got 128"):
        encoder(torch.zeros(1, FRAMES, 128))
    with pytest.raises(ValueError, match=r"patch 16x16 is larger than the input 48x8"):
        ssamba.load_encoder(official_file, target_length=8)


# ------------------------------------------------------------------------------------- adaptation


def _bilinear_axis(n_in: int, n_out: int) -> np.ndarray:
    """Interpolation matrix (n_out, n_in) of bilinear resizing with align_corners=False (half-pixel centres)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        w = src - lo
        m[i, lo] += 1 - w
        m[i, hi] += w
    return m


def _expected_adapted(pos: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """SSAMBA's rule written out: grid (D, f, t); time crop/interp, then frequency; CLS kept."""
    dim = pos.shape[-1]
    grid = pos[0, 1:].T.reshape(dim, *src)
    (f0, t0), (f1, t1) = src, dst
    grid = grid[:, :, t0 // 2 - t1 // 2 : t0 // 2 - t1 // 2 + t1] if t1 < t0 else grid @ _bilinear_axis(t0, t1).T
    grid = grid[:, f0 // 2 - f1 // 2 : f0 // 2 - f1 // 2 + f1] if f1 < f0 else np.einsum("gf,dft->dgt", _bilinear_axis(f0, f1), grid)
    return np.concatenate([pos[0, :1], grid.reshape(dim, f1 * t1).T])[None]


@pytest.mark.parametrize("dst", [(12, 101), (12, 50), (12, 12), (8, 64), (6, 99), (4, 20)])
def test_pos_embed_adaptation_values(dst):
    pos = torch.randn(1, 1 + 8 * 64, 5, generator=torch.Generator().manual_seed(0))
    got = adapt_pos_embed(pos, 1, (8, 64), dst)
    # float32 interpolation weights (as in the original) vs float64 ones here: ~1e-5 apart
    np.testing.assert_allclose(got.numpy(), _expected_adapted(pos.numpy().astype(np.float64), (8, 64), dst), rtol=0, atol=5e-5)


def test_time_crop_keeps_the_centre_columns():
    grid = torch.arange(8 * 64, dtype=torch.float32).view(8, 64)  # entry = f * 64 + t
    pos = torch.cat([torch.full((1, 1), -1.0), grid.view(-1, 1)]).view(1, -1, 1)
    cropped = adapt_pos_embed(pos, 1, (8, 64), (8, 50))[0, 1:, 0].view(8, 50)
    assert cropped[0].tolist() == list(range(7, 57))  # columns 7..56 of 64
    assert cropped[:, 0].tolist() == [f * 64 + 7 for f in range(8)]
    assert adapt_pos_embed(pos, 1, (8, 64), (8, 50))[0, 0, 0] == -1.0


@pytest.mark.parametrize("target_length, stride", [(40, 10), (96, 10), (64, 16)])
def test_finetuning_adaptation_matches_ssamba(official_file, target_length, stride):
    encoder = ssamba.load_encoder(official_file, target_length=target_length, fstride=stride, tstride=stride)
    grid = ((MEL - PATCH) // stride + 1, (target_length - PATCH) // stride + 1)
    assert encoder.grid == grid
    state = official_ssamba_state()
    expected_pos = _expected_adapted(state["module.v.pos_embed"].numpy().astype(np.float64), (MEL // PATCH, FRAMES // PATCH), grid)
    np.testing.assert_allclose(encoder.pos_embed.detach().numpy(), expected_pos, atol=1e-6)
    assert torch.equal(encoder.patch_embed.proj.weight, state["module.v.patch_embed.proj.weight"])
    fbank = _fbank(frames=target_length, seed=5)
    with torch.no_grad():
        _close(encoder(fbank), reference_ssamba(state, fbank, stride, stride, torch.from_numpy(expected_pos)))


# ------------------------------------------------------------------------------------------------ AuM


@pytest.mark.parametrize("bimamba", ["v1", "v2", "none"])
def test_aum_checkpoint_reproduces_aum_computation(tmp_path, bimamba):
    state = aum_state(seed=7, bimamba=bimamba)
    torch.save(state, tmp_path / "aum.pth")
    ckpt = read_checkpoint(tmp_path / "aum.pth")
    assert ckpt.layout == "aum" and set(ckpt.unused) == {"head.weight", "head.bias"}
    encoder = ckpt.build_encoder()
    cfg = encoder.config
    assert (cfg.bimamba, cfg.norm, cfg.cls_position, cfg.layer_pairing, cfg.num_mel_bins, cfg.target_length) == (bimamba, "rmsnorm", "middle", False, 128, 64)
    fbank = _fbank(mel=128, seed=8)
    expected = reference_aum(state, fbank)
    with torch.no_grad():
        _close(encoder(fbank), expected)
        _close(encoder.embed(fbank), expected[:, 16])  # AuM's head reads the CLS token at N // 2


def test_aum_with_dataparallel_prefix_and_resize(tmp_path):
    state = {f"module.{k}": v for k, v in aum_state(bimamba="v2", t_patches=6).items()}
    torch.save(state, tmp_path / "aum_dp.pth")
    encoder = ssamba.load_encoder(tmp_path / "aum_dp.pth", target_length=64)
    pos = state["module.pos_embed.pos_embed"]
    grid = pos[:, 1:].transpose(1, 2).reshape(1, DIM, 8, 6)
    expected = F.interpolate(grid, size=(8, 4), mode="bilinear", align_corners=False, antialias=True).reshape(1, DIM, 32).transpose(1, 2)
    assert torch.allclose(encoder.pos_embed[:, 1:], expected, atol=1e-6)
    assert torch.equal(encoder.pos_embed[:, :1], pos[:, :1])


# ------------------------------------------------------------------------------- pretraining heads


def _reference_heads(official, fbank, mask_ids):
    p = {k[len("module.") :]: v.double() for k, v in official.items()}
    hidden = reference_ssamba(official, fbank, mask_ids=mask_ids)
    image = fbank.double().unsqueeze(1).transpose(2, 3)
    targets = F.unfold(image, PATCH, stride=PATCH).transpose(1, 2)
    nce_sum, correct, mse = 0.0, 0, []
    for b in range(fbank.shape[0]):
        h = hidden[b, mask_ids[b] + 1]  # CLS at index 0
        t = targets[b, mask_ids[b]]
        head = lambda name, h=h: torch.relu(h @ p[f"{name}.0.weight"].T + p[f"{name}.0.bias"]) @ p[f"{name}.2.weight"].T + p[f"{name}.2.bias"]
        scores = t @ head("cpredlayer").T  # S[j, k] = <target_j, pred_k>
        nce_sum += torch.log_softmax(scores, -1).diagonal().sum()
        correct += int((scores.softmax(-1).argmax(0) == torch.arange(len(h))).sum())
        mse.append((head("gpredlayer") - t).pow(2))
    count = mask_ids.numel()
    return -nce_sum / count, correct / count, torch.cat(mse).mean()


def test_pretraining_model_from_official_checkpoint(official_file):
    model = ssamba.load_pretraining_model(official_file)
    assert isinstance(model, MaskedPatchModel) and not model.training
    fbank = _fbank(seed=9)
    mask_ids = torch.tensor([[0, 2, 5, 6, 11], [1, 3, 4, 7, 10]])
    nce, acc, mse = _reference_heads(official_ssamba_state(), fbank, mask_ids)
    with torch.no_grad():
        mpc = model.mpc(fbank, mask_ids)
        got_mse = model.mpg(fbank, mask_ids)
    assert abs(mpc.nce.item() - nce.item()) < 1e-4 * max(1, abs(nce.item()))
    assert mpc.acc.item() == pytest.approx(acc)
    assert abs(got_mse.item() - mse.item()) < 1e-4 * mse.item()


# ------------------------------------------------------------------------- our own checkpoints, export


def _training_checkpoint(tmp_path, **extra):
    torch.manual_seed(0)
    encoder = AudioMambaEncoder(preset_config("ssamba-tiny", embed_dim=DIM, depth=DEPTH, num_mel_bins=MEL, target_length=FRAMES))
    model = MaskedPatchModel(encoder, ObjectiveConfig(mask_patch=4, eval_mask_patch=4))
    features = FeatureConfig(num_mel_bins=MEL, target_length=FRAMES, mean=-5.0, std=3.0)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(
        {
            "format": "ssamba-train",
            "version": 1,
            "model": model.state_dict(),
            "encoder_config": encoder.config.to_dict(),
            "objective_config": model.config.to_dict(),
            "features": features.to_dict(),
            "step": 1234,
            "rng": {"numpy": np.random.get_state()},  # numpy arrays, as the engine stores RNG state
            **extra,
        },
        run / "checkpoints" / "last.pt",
    )
    return run, model.eval()


def test_training_run_loads_encoder_and_pretraining_model(tmp_path):
    run, model = _training_checkpoint(tmp_path)
    fbank = _fbank(seed=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tensors, dicts and numpy arrays load without full unpickling
        encoder = ssamba.load_encoder(run)
        loaded = ssamba.load_pretraining_model(run / "checkpoints" / "last.pt")
    mask_ids = torch.tensor([[1, 2, 3, 9]] * 2)
    with torch.no_grad():
        assert torch.equal(encoder(fbank), model.encoder(fbank))
        assert torch.equal(loaded.mpc(fbank, mask_ids).nce, model.mpc(fbank, mask_ids).nce)


def test_export_round_trip(tmp_path, official_file):
    out = export_encoder(official_file, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert (config["format"], config["version"]) == ("ssamba-encoder", 1)
    assert config["features"]["mean"] == pytest.approx(-4.2677393) and config["features"]["std"] == pytest.approx(4.5689974)
    assert config["provenance"]["source_layout"] == "ssamba-official"
    assert len(config["provenance"]["source_sha256"]) == 64
    weights = load_file(str(out / "model.safetensors"))
    original = ssamba.load_encoder(official_file)
    assert set(weights) == set(original.state_dict())  # encoder only: no heads, no v.head
    assert "width 32, depth 2" in (out / "README.md").read_text()
    reloaded = ssamba.load_encoder(out)
    assert reloaded.config == original.config
    fbank = _fbank(seed=11)
    with torch.no_grad():
        assert torch.equal(reloaded(fbank), original(fbank))
    adapted = ssamba.load_encoder(out, target_length=40, fstride=10, tstride=10)
    direct = ssamba.load_encoder(official_file, target_length=40, fstride=10, tstride=10)
    assert torch.equal(adapted.pos_embed, direct.pos_embed)
    with pytest.raises(FileExistsError, match="already holds config.json"):
        export_encoder(official_file, out)


def test_export_and_import_commands(tmp_path, official_file, capsys):
    assert cli_main(["import", str(official_file), str(tmp_path / "imported"), "--target-length", "40", "--fstride", "10", "--tstride", "10"]) == 0
    assert "not exported: v.head.weight" in capsys.readouterr().out
    config = json.loads((tmp_path / "imported" / "config.json").read_text())
    assert (config["encoder"]["target_length"], config["encoder"]["tstride"], config["features"]["target_length"]) == (40, 10, 40)
    assert config["provenance"]["adapted_from"] == {"target_length": FRAMES, "fstride": PATCH, "tstride": PATCH}
    run, model = _training_checkpoint(tmp_path, scheduler={"ratio": fractions.Fraction(1, 3)})
    capsys.readouterr()
    assert cli_main(["export", str(run), str(tmp_path / "exported")]) == 2  # a pickled Fraction: refused by default
    assert "references the Python object fractions.Fraction" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="unpickling it fully"):
        assert cli_main(["export", str(run), str(tmp_path / "exported"), "--unsafe-load"]) == 0
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["provenance"]["step"] == 1234 and config["features"]["mean"] == -5.0
    capsys.readouterr()
    assert cli_main(["import", str(tmp_path / "exported"), str(tmp_path / "again")]) == 2
    assert "use `ssamba export`" in capsys.readouterr().err
    with torch.no_grad():
        fbank = _fbank(seed=12)
        assert torch.equal(ssamba.load_encoder(tmp_path / "exported")(fbank), model.encoder(fbank))
