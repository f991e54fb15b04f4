"""Reading checkpoints never runs code from the file, and every bad file gets a clear one-line error.

A crafted pickle payload (it would create a marker file) is refused by ``load_encoder`` and by the
``export``, ``import`` and ``embed`` commands unless the explicit opt-in is given (``pretrain --resume``
is covered in test_pretrain.py); official SSAMBA files saved as the original does load weights-only;
empty, truncated, NaN and mislabelled files say what is wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

import ssamba
from conftest import TINY_DIM, TINY_MEL_BINS, tiny_export
from ssamba.cli import COMMANDS
from ssamba.cli import main as cli_main
from ssamba.errors import UnsafeCheckpointError
from ssamba.interop.checkpoints import CheckpointError, read_checkpoint
from ssamba.models.encoder import AudioMambaEncoder, preset_config

FRAMES = 64
PATCH_VALUES = 16 * 16


class _OfficialSsamba(nn.Module):
    """The module layout the original SSAMBA pretraining model saves (its tensors, under DataParallel)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.v = AudioMambaEncoder(preset_config("ssamba-tiny", embed_dim=TINY_DIM, depth=2, num_mel_bins=TINY_MEL_BINS, target_length=FRAMES))
        self.cpredlayer = nn.Sequential(nn.Linear(TINY_DIM, TINY_DIM), nn.ReLU(), nn.Linear(TINY_DIM, PATCH_VALUES))
        self.gpredlayer = nn.Sequential(nn.Linear(TINY_DIM, TINY_DIM), nn.ReLU(), nn.Linear(TINY_DIM, PATCH_VALUES))
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, TINY_DIM))
        self.p_input_fdim = nn.Parameter(torch.tensor(TINY_MEL_BINS), requires_grad=False)
        self.p_input_tdim = nn.Parameter(torch.tensor(FRAMES), requires_grad=False)


def official_state() -> dict[str, torch.Tensor]:
    """``DataParallel(model).state_dict()``, exactly what the original passes to ``torch.save``."""
    return nn.DataParallel(_OfficialSsamba()).state_dict()


class CodePayload:
    """Unpickling this object runs code that creates ``marker`` (a stand-in for anything an attacker wants)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def payload_file(tmp_path: Path) -> tuple[Path, Path]:
    """An official checkpoint wrapped as ``{"model": state, "args": payload}`` (Vim-style), and the marker path."""
    marker = tmp_path / "marker"
    path = tmp_path / "amba_tiny_400.pth"
    torch.save({"model": official_state(), "args": CodePayload(marker)}, path)
    return path, marker


def test_official_file_saved_as_the_original_loads_weights_only(tmp_path):
    path = tmp_path / "amba_tiny_400.pth"
    torch.save(official_state(), path)
    torch.load(path, weights_only=True)  # no extra globals: plain tensors in an OrderedDict
    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == "ssamba-official" and checkpoint.encoder_config.embed_dim == TINY_DIM
    assert set(checkpoint.head_state) == {"mask_embed"} | {f"{h}.{i}.{p}" for h in ("cpredlayer", "gpredlayer") for i in (0, 2) for p in ("weight", "bias")}


def test_pickle_payload_is_refused_by_load_encoder_and_loads_only_with_the_opt_in(tmp_path):
    path, marker = payload_file(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=r"amba_tiny_400.pth: refused to load: it references the Python object (builtins.)?exec.*unsafe_load=True \(command line: --unsafe-load\)"):
        ssamba.load_encoder(path)
    with pytest.raises(UnsafeCheckpointError):
        ssamba.load_pretraining_model(path)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="unpickling it fully"):
        encoder = ssamba.load_encoder(path, unsafe_load=True)
    assert marker.exists() and encoder.config.embed_dim == TINY_DIM


@pytest.mark.parametrize("command", ["export", "import", "embed"])
def test_pickle_payload_is_refused_by_the_commands(tmp_path, capsys, command):
    path, marker = payload_file(tmp_path)
    soundfile.write(tmp_path / "clip.wav", np.zeros(16000, np.float32), 16000)
    argv = {
        "export": ["export", str(path), str(tmp_path / "out")],
        "import": ["import", str(path), str(tmp_path / "out")],
        "embed": ["embed", str(tmp_path / "clip.wav"), "--checkpoint", str(path), "--out", str(tmp_path / "out")],
    }[command]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssamba {command}: error: {path}: refused to load: it references the Python object")
    assert "exec" in err and "--unsafe-load" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()
    if command != "embed":  # the opt-in reads it (embedding a silent clip adds nothing here)
        with pytest.warns(UserWarning, match="unpickling it fully"):
            assert cli_main([*argv, "--unsafe-load"]) == 0
        assert marker.exists()


# ---------------------------------------------------------------------------------- bad files


def test_bad_checkpoints_say_what_is_wrong(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt: empty file \(0 bytes\), not a checkpoint"):
        ssamba.load_encoder(empty)

    good = tmp_path / "good.pth"
    torch.save(official_state(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pth: not a checkpoint, or a truncated or corrupt one: PyTorch cannot read it \(RuntimeError: PytorchStreamReader"):
        ssamba.load_encoder(cut)

    state = official_state()
    state["module.v.layers.1.mixer.D"][3] = float("nan")
    state["module.cpredlayer.0.bias"][0] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan.pth: tensors with NaN or Inf values: layers.1.mixer.D, cpredlayer.0.bias"):
        ssamba.load_encoder(tmp_path / "nan.pth")

    state = official_state()
    state["module.cpredlayer.4.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "heads.pth")
    with pytest.raises(CheckpointError, match=r"heads.pth: pretraining-head tensors are not SSAMBA's .*unmapped: cpredlayer.4.weight"):
        ssamba.load_encoder(tmp_path / "heads.pth")


def test_export_config_without_embed_dim_is_named(tmp_path):
    export = tiny_export(tmp_path)
    config = json.loads((export / "config.json").read_text())
    del config["encoder"]["embed_dim"]
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: 'encoder' lacks embed_dim \(a config written by ssamba has every EncoderConfig field\)"):
        ssamba.load_encoder(export)


# ---------------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["shards", "folder", "{tmp}/none", "-o", "{tmp}/shards"], "audio folder {tmp}/none is not a directory"),
        (["stats", "{tmp}/none/*.tar"], "no shards found for '{tmp}/none/*.tar'"),
        (["pretrain", "--config", "{tmp}/none.yaml"], "config file {tmp}/none.yaml does not exist"),
        (["export", "{tmp}/empty.pt", "{tmp}/out"], "{tmp}/empty.pt: empty file (0 bytes), not a checkpoint"),
        (["import", "{tmp}/none.pth", "{tmp}/out"], "checkpoint not found: {tmp}/none.pth"),
        (["embed", "{tmp}/none.wav", "--checkpoint", "{tmp}/empty.pt", "--out", "{tmp}/out"], "{tmp}/none.wav: no such file or folder"),
    ],
)
def test_every_command_reports_errors_in_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "empty.pt").write_bytes(b"")
    code = cli_main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"ssamba {argv[0]}: error: {message.format(tmp=tmp_path)}") and err.count("\n") == 1, err


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        cli_main(["export", str(tmp_path / "empty.pt"), str(tmp_path / "out"), "--debug"])
    with pytest.raises(CheckpointError, match="empty file"):
        cli_main(["--debug", "export", str(tmp_path / "empty.pt"), str(tmp_path / "out")])


def test_help_and_version_do_not_import_torch():
    code = (
        "import contextlib, io, sys\n"
        "from ssamba.cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "    print(repr(out.getvalue()))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    help_text, version, torch_imported = result.stdout.splitlines()
    assert "pretrain  Pretrain an Audio Mamba encoder" in eval(help_text)
    assert eval(version) == f"ssamba {ssamba.__version__}\n"
    assert torch_imported == "False"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_help_does_not_import_torch(command):
    """`ssamba <command> --help` shows the command's options and examples without importing torch (fast)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from ssamba.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        status = main([{command!r}, '--help'])\n"
        "    except SystemExit as exit:\n"
        "        status = exit.code\n"
        "print(json.dumps({'status': status, 'help': out.getvalue(), 'torch': 'torch' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout)
    assert report["status"] == 0
    assert f"usage: ssamba {command}" in report["help"] and "--debug" in report["help"]
    assert report["torch"] is False, f"`ssamba {command} --help` imported torch"
