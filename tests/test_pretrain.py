"""The pretraining engine end to end on a tiny model and a generated corpus.

Default suite: single-process training, checkpoints (format, pruning, best by eval accuracy),
TensorBoard and JSONL logs, non-finite handling, a SIGKILL mid-run and ``--resume auto``, the shell
script's ``--help`` and a few-step run of it. Slow (``./shell/test.sh --slow``): 2 processes under
torchrun with DDP and with DeepSpeed (ZeRO 1 and 2).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssamba.data.shards import ShardOptions, write_shards
from ssamba.data.sources import folder
from ssamba.data.synthetic import write_demo_corpus
from ssamba.models.encoder import AudioMambaEncoder
from ssamba.models.masked import MaskedPatchModel
from ssamba.train.config import load_config
from ssamba.train.engine import CHECKPOINT_FORMAT, load_checkpoint, seed_everything
from ssamba.train.metrics import read_metrics
from ssamba.train.pretrain import NonFiniteLossError, pretrain

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "pretrain" / "base.yaml"
CLIP_SECONDS = 1.3  # 128 frames after padding: an 8 x 8 patch grid
TINY = [
    "model.preset=ssamba-tiny", "model.embed_dim=32", "model.depth=2", "features.target_length=128",
    "objective.mask_patch=20", "objective.eval_mask_patch=20", "data.batch_size=4", "data.num_workers=0",
    "data.shuffle_buffer=8", "schedule.warmup_steps=2", "train.log_every=1",
]
TRAIN_SCALARS = {"loss", "nce", "mse", "acc", "lr", "grad_norm", "clips_per_s", "data_wait_frac", "nonfinite_skipped"}


def _write_shard_set(root: Path, name: str, clips: int, per_shard: int, seed: int) -> Path:
    audio = root / f"{name}_audio"
    write_demo_corpus(audio, clips, seconds=CLIP_SECONDS, seed=seed)
    out = root / name
    write_shards(folder.scan(audio), out, ShardOptions(max_count=per_shard), log=lambda message: None)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    return {"train": _write_shard_set(root, "train", 32, 8, seed=0), "eval": _write_shard_set(root, "eval", 8, 4, seed=1)}


def tiny_overrides(shards: dict[str, Path], run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.train_shards={shards['train']}", f"data.eval_shards={shards['eval']}", f"run.dir={run_dir}", *extra]


def run_tiny(shards: dict[str, Path], run_dir: Path, *extra: str, resume: str = "never") -> dict[str, float]:
    return pretrain(load_config(BASE_CONFIG, tiny_overrides(shards, run_dir, *extra)), resume=resume, progress=False)


def initial_model(run_dir: Path) -> MaskedPatchModel:
    """The model pretraining starts from (same seed, same construction order)."""
    cfg = load_config(run_dir / "config.yaml")
    seed_everything(cfg.run.seed)
    return MaskedPatchModel(AudioMambaEncoder(cfg.encoder_config()), cfg.objective)


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]


# ------------------------------------------------------------------------------------ single process


def test_one_step_changes_every_parameter(shards: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_tiny(shards, run_dir, "train.max_steps=1", "train.eval_every=0", "schedule.name=constant")
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    start = initial_model(run_dir).state_dict()
    assert trained.keys() == start.keys()
    unchanged = [name for name, value in start.items() if value.is_floating_point() and torch.equal(trained[name], value)]
    assert unchanged == []


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])  # CPU fp16 matmuls are slow
def test_mixed_precision_step(shards: dict[str, Path], tmp_path: Path, precision: str) -> None:
    run_dir = tmp_path / "run"
    run_tiny(shards, run_dir, "train.max_steps=2", "train.eval_every=0", "schedule.name=constant", f"train.precision={precision}")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == 2 and all(v.dtype == torch.float32 for v in last["model"].values() if v.is_floating_point())
    assert bool(last["scaler"]) == (precision == "fp16")  # fp16 trains with a gradient scaler
    assert all(math.isfinite(r["loss"]) for r in train_records(run_dir))


def test_run_directory_checkpoints_and_logs(shards: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_tiny(shards, run_dir, "train.max_steps=6", "train.eval_every=2", "train.save_every=3", "train.keep_last=2", "schedule.plateau_patience=0")
    ckpt_dir = run_dir / "checkpoints"
    assert load_config(run_dir / "config.yaml").train.max_steps == 6

    # checkpoint contract read by the export code
    last = load_checkpoint(ckpt_dir / "last.pt")
    assert last["format"] == CHECKPOINT_FORMAT and last["version"] == 1 and last["step"] == 6
    assert {"model", "encoder_config", "objective_config", "features", "optimizer", "scheduler", "scaler", "rng", "data_state", "metrics"} <= set(last)
    assert last["encoder_config"]["embed_dim"] == 32 and last["features"]["target_length"] == 128
    assert last["objective_config"]["mask_patch"] == 20
    assert {key.split(".")[0] for key in last["model"]} == {"encoder", "cpredlayer", "gpredlayer", "mask_embed"}
    assert last["data_state"]["epoch"] == 0 and last["data_state"]["batches_in_epoch"] == 6

    # evaluations at steps 2, 4, 6; best.pt holds the step with the highest eval accuracy
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6] and all(r["clips"] == 8 for r in evals)
    best_step = max(evals, key=lambda r: (r["acc"], -r["step"]))["step"]
    best = load_checkpoint(ckpt_dir / "best.pt")
    assert best["step"] == best_step and best["metrics"]["eval_acc"] == pytest.approx(max(r["acc"] for r in evals))

    # saved every 3 steps and whenever eval accuracy improved; keep_last=2 step files remain
    improved, best_acc = set(), -1.0
    for record in evals:
        if record["acc"] > best_acc:
            improved.add(record["step"])
            best_acc = record["acc"]
    saved = sorted({3, 6} | improved)
    assert sorted(p.name for p in ckpt_dir.glob("step-*.pt")) == [f"step-{step:08d}.pt" for step in saved[-2:]]
    assert not list(ckpt_dir.glob(".*tmp*"))

    # JSONL: one train record per step with every scalar
    records = train_records(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert TRAIN_SCALARS <= set(records[0])
    assert [r["lr"] for r in records[:3]] == pytest.approx([5e-5, 1e-4, 1e-4])

    # TensorBoard: the same scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"train/{name}" for name in TRAIN_SCALARS} | {"eval/acc", "eval/mse", "eval/nce"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert events.Scalars("eval/acc")[-1].value == pytest.approx(evals[-1]["acc"], rel=1e-6)


def test_existing_run_needs_resume_and_matching_architecture(shards: dict[str, Path], tmp_path: Path) -> None:
    from ssamba.train.config import ConfigError

    run_dir = tmp_path / "run"
    run_tiny(shards, run_dir, "train.max_steps=1", "train.eval_every=0", "schedule.name=constant")
    with pytest.raises(ConfigError, match="already holds a run .*pass --resume auto to continue it"):
        run_tiny(shards, run_dir, "train.max_steps=2", "train.eval_every=0", "schedule.name=constant")
    with pytest.raises(ConfigError, match=r"cannot resume from .*last.pt: model.depth differ from the checkpoint's config"):
        run_tiny(shards, run_dir, "train.max_steps=2", "train.eval_every=0", "schedule.name=constant", "model.depth=4", resume="auto")


def _nan_on_calls(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int] | None) -> None:
    """Make MaskedPatchModel.forward return a NaN loss on the given training calls (all if None)."""
    original = MaskedPatchModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if bad_calls is None or calls["n"] in bad_calls:
                return type(out)(loss=out.loss * float("nan"), nce=out.nce, mse=out.mse, acc=out.acc)
        return out

    monkeypatch.setattr(MaskedPatchModel, "forward", forward)


def test_nonfinite_losses_are_skipped_and_counted(shards: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_on_calls(monkeypatch, {2, 3})
    run_dir = tmp_path / "run"
    run_tiny(shards, run_dir, "train.max_steps=4", "train.eval_every=0", "schedule.name=constant")
    records = train_records(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["nonfinite_skipped"] for r in records] == [0, 2, 2, 2]
    model = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def test_too_many_nonfinite_in_a_row_stop_without_touching_checkpoints(shards: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    extra = ("train.eval_every=0", "schedule.name=constant", "train.save_every=1")
    run_tiny(shards, run_dir, "train.max_steps=2", *extra)
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    _nan_on_calls(monkeypatch, None)
    with pytest.raises(NonFiniteLossError, match=r"^3 micro-batches in a row had a non-finite loss or gradient \(train.max_nonfinite=3\) after step 2; stopped without writing a checkpoint"):
        run_tiny(shards, run_dir, "train.max_steps=4", "train.max_nonfinite=3", *extra, resume="auto")
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt", "step-00000001.pt", "step-00000002.pt"]


# ------------------------------------------------------------------------------------ kill and resume


def test_sigkill_then_resume_auto_continues_the_same_run(shards: dict[str, Path], tmp_path: Path) -> None:
    """Epochs of 2 batches and a checkpoint every 2 steps: the resumed run must reproduce an
    uninterrupted run exactly (same lr schedule with plateau reductions, losses and weights)."""
    extra = ("data.epoch_length=2", "train.max_steps=8", "train.save_every=2", "train.eval_every=2", "schedule.warmup_steps=3", "schedule.plateau_patience=0")
    reference_dir = tmp_path / "reference"
    run_tiny(shards, reference_dir, *extra)

    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "ssamba", "pretrain", "--config", str(BASE_CONFIG), "--no-progress", *tiny_overrides(shards, run_dir, *extra)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = run_dir / "checkpoints" / "last.pt"  # pointed at the step file after it is written: wait for both
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert first.exists(), stderr
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    saved_step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    logged_step = max(r["step"] for r in train_records(run_dir))
    assert saved_step in (2, 4, 6) and 0 <= logged_step - saved_step <= 2  # at most one save interval lost

    run_tiny(shards, run_dir, *extra, resume="auto")
    resumed, reference = train_records(run_dir), train_records(reference_dir)
    assert [r["step"] for r in resumed] == list(range(1, 9))  # records after the checkpoint were replaced
    lrs = [r["lr"] for r in reference]
    assert [r["lr"] for r in resumed] == lrs
    assert lrs[:3] == pytest.approx([1e-4 / 3, 2e-4 / 3, 1e-4]) and min(lrs[4:]) < 1e-4  # warm-up, then plateau cuts
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    final, expected = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (run_dir, reference_dir))
    assert final["step"] == 8 and final["scheduler"] == expected["scheduler"]
    for name, value in expected["model"].items():
        torch.testing.assert_close(final["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------ resume policy, lock, safety


def test_resume_auto_takes_the_newest_readable_checkpoint_and_keeps_history(shards: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssamba.interop.checkpoints import CheckpointError

    run_dir = tmp_path / "run"
    extra = ("train.eval_every=0", "schedule.name=constant", "train.save_every=2", "train.keep_last=3")
    run_tiny(shards, run_dir, "train.max_steps=4", *extra)
    ckpt = run_dir / "checkpoints"
    (ckpt / "last.pt").unlink()  # lost, and the newest step file cut short
    newest = ckpt / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    run_tiny(shards, run_dir, "train.max_steps=4", *extra, resume="auto")
    out = capsys.readouterr().out
    assert f"--resume auto: skipped {newest} (not a checkpoint, or a truncated or corrupt one" in out
    assert f"renamed the unreadable step-00000004.pt to step-00000004.pt.unreadable" in out
    assert f"resumed from {ckpt / 'step-00000002.pt'} at step 2" in out
    assert "pretraining ssamba-tiny with depth=2, embed_dim=32 (" in out  # the banner names the overrides
    assert [r["step"] for r in train_records(run_dir)] == [1, 2, 3, 4]  # steps 1-2 kept, 3-4 redone
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "step-00000002.pt", "step-00000004.pt", "step-00000004.pt.unreadable"]
    assert load_checkpoint(ckpt / "last.pt")["step"] == 4

    # no checkpoint readable: a clear error, and nothing in the run directory changes
    for path in ckpt.glob("*.pt"):
        path.write_bytes(b"")
    before = {p.name: p.read_bytes() for p in [*ckpt.iterdir(), run_dir / "metrics.jsonl"]}
    with pytest.raises(CheckpointError, match=r"--resume auto: none of the checkpoints in .* can be read \(last.pt: empty file \(0 bytes\)"):
        run_tiny(shards, run_dir, "train.max_steps=4", *extra, resume="auto")
    assert {p.name: p.read_bytes() for p in [*ckpt.iterdir(), run_dir / "metrics.jsonl"]} == before


def test_run_directory_is_locked_against_a_second_writer(shards: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssamba.errors import RunLockedError
    from ssamba.train.engine import RunLock

    run_dir = tmp_path / "run"
    other = RunLock(run_dir)
    assert other.acquire() is None
    try:
        with pytest.raises(RunLockedError, match=rf"{run_dir} is in use by another run \(pid {os.getpid()} on "):
            run_tiny(shards, run_dir, "train.max_steps=1", "train.eval_every=0", "schedule.name=constant")
    finally:
        other.release()
    assert not (run_dir / "checkpoints").exists()

    # a lock whose owner died without releasing it (its record is still there) is taken over
    (run_dir / "run.lock").write_text(json.dumps({"pid": 2**22 + 1, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"}))
    capsys.readouterr()
    run_tiny(shards, run_dir, "train.max_steps=1", "train.eval_every=0", "schedule.name=constant")
    assert f"took over the lock of {run_dir} left by a run that is gone (pid {2**22 + 1} on elsewhere" in capsys.readouterr().out
    assert (run_dir / "run.lock").read_text() == ""  # released at the end


def test_resume_refuses_a_pickle_payload_without_the_opt_in(shards: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssamba.cli import main as cli_main

    run_dir = tmp_path / "run"
    extra = ("train.eval_every=0", "schedule.name=constant")
    run_tiny(shards, run_dir, "train.max_steps=1", *extra)
    last = run_dir / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["step"] == 1  # our checkpoints need no unpickling
    marker = tmp_path / "marker"
    payload = {**load_checkpoint(last), "notes": _CodePayload(marker)}
    crafted = tmp_path / "crafted.pt"
    torch.save(payload, crafted)
    argv = ["pretrain", "--config", str(BASE_CONFIG), "--no-progress", *tiny_overrides(shards, run_dir, "train.max_steps=2", *extra), "--resume", str(crafted)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssamba pretrain: error: {crafted}: refused to load: it references the Python object") and "--unsafe-load" in err
    assert not marker.exists() and load_checkpoint(last)["step"] == 1
    with pytest.warns(UserWarning, match="unpickling it fully"):
        assert cli_main([*argv, "--unsafe-load"]) == 0
    assert marker.exists() and load_checkpoint(last)["step"] == 2


class _CodePayload:
    """Unpickling this runs code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_failed_checkpoint_write_keeps_the_previous_one(shards: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from ssamba.train.engine import CheckpointWriteError

    run_dir = tmp_path / "run"
    extra = ("train.eval_every=0", "schedule.name=constant", "train.save_every=1")
    run_tiny(shards, run_dir, "train.max_steps=1", *extra)
    ckpt = run_dir / "checkpoints"
    before = (ckpt / "last.pt").read_bytes()

    def full_disk(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=rf"^cannot write checkpoint {ckpt / 'step-00000002.pt'}: No space left on device; nothing was written"):
        run_tiny(shards, run_dir, "train.max_steps=2", *extra, resume="auto")
    assert (ckpt / "last.pt").read_bytes() == before
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "step-00000001.pt"]


# ------------------------------------------------------------------------------------ shell script

SCRIPT = REPO / "shell" / "run_mask_patch_amba.sh"


def _script_env() -> dict[str, str]:
    # one thread: a tiny model gains nothing from more, and it keeps the test steady on a busy machine
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "SSAMBA_NO_VENV": "1", "OMP_NUM_THREADS": "1", "PATH": path}


def test_shell_script_help_lists_the_knobs() -> None:
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, env=_script_env(), timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for knob in ("--model-size", "--mask-patch", "--lr", "--batch-size", "--epochs", "--steps", "--shards", "--eval-shards", "--exp-dir", "--nproc-per-node", "--engine", "MODEL_SIZE", "NPROC_PER_NODE"):
        assert knob in result.stdout, knob


def test_shell_script_tiny_demo_end_to_end(tmp_path: Path) -> None:
    exp_dir = tmp_path / "exp"
    command = [
        str(SCRIPT), "--exp-dir", str(exp_dir), "--steps", "3", "--batch-size", "4", "--demo-clips", "16", "--demo-seconds", str(CLIP_SECONDS),
        "--", "model.embed_dim=32", "model.depth=2", "features.target_length=128", "objective.mask_patch=20",
        "objective.eval_mask_patch=20", "data.num_workers=0", "train.eval_every=3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=_script_env(), timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = exp_dir / "run"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3
    assert [r["step"] for r in train_records(run_dir)] == [3]  # log_every=5 in the demo config: the final step is logged
    assert f"checkpoints: {run_dir / 'checkpoints'}" in result.stdout
    assert f"logs:        {run_dir / 'metrics.jsonl'}" in result.stdout
    if (REPO / "ssamba" / "interop" / "export.py").exists():
        assert (exp_dir / "export" / "model.safetensors").exists()
        assert f"export:      {exp_dir / 'export'}" in result.stdout


# ------------------------------------------------------------------------------------ multi-process (slow)


def _torchrun(shards: dict[str, Path], run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ssamba", "pretrain",
        "--config", str(BASE_CONFIG), "--no-progress", *tiny_overrides(shards, run_dir, *extra),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "deepspeed-zero1", "deepspeed-zero2"])
def test_two_processes_train_in_sync(shards: dict[str, Path], tmp_path: Path, engine: str) -> None:
    extra = ["train.max_steps=4", "train.save_every=2", "train.eval_every=2", "optim.accumulate=2"]
    if engine.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install 'ssamba[deepspeed]'")
        extra += ["dist.engine=deepspeed", f"dist.deepspeed_config=configs/deepspeed/{engine.split('-')[1]}.json"]
    run_dir = tmp_path / "run"
    result = _torchrun(shards, run_dir, *extra, "data.epoch_length=4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == 4 and last["world_size"] == 2
    assert len(set(last["parameter_digests"])) == 1  # both ranks hold identical weights
    start = initial_model(run_dir).state_dict()
    changed = [name for name, value in start.items() if value.is_floating_point() and not torch.equal(last["model"][name], value)]
    assert changed == [name for name, value in start.items() if value.is_floating_point()]
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all(r["clips"] == 8 for r in evals)  # eval split over ranks

    # resume with the same engine and 2 processes continues from step 4
    result = _torchrun(shards, run_dir, *[e.replace("max_steps=4", "max_steps=6") for e in extra], "data.epoch_length=4", "--resume", "auto")
    assert result.returncode == 0, result.stderr[-6000:]
    again = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert again["step"] == 6 and len(set(again["parameter_digests"])) == 1


@pytest.mark.slow
def test_deepspeed_single_process_step(shards: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install 'ssamba[deepspeed]'")
    run_dir = tmp_path / "run"
    if shutil.which("g++") is None:
        pytest.skip("DeepSpeed's CPU communication op needs a C++ compiler")
    result = subprocess.run(
        [sys.executable, "-m", "ssamba", "pretrain", "--config", str(BASE_CONFIG), "--no-progress",
         *tiny_overrides(shards, run_dir, "train.max_steps=1", "train.eval_every=0", "schedule.name=constant", "dist.engine=deepspeed")],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    start = initial_model(run_dir).state_dict()
    assert all(not torch.equal(trained[n], v) for n, v in start.items() if v.is_floating_point())
