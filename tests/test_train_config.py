"""Pretraining config: YAML + overrides, validation messages, named configs, lr schedule, DeepSpeed JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ssamba.cli import main as cli_main
from ssamba.train.config import (
    ConfigError,
    PretrainConfig,
    apply_overrides,
    build_config,
    load_config,
    parse_yaml,
)
from ssamba.train.engine import LRSchedule, deepspeed_config

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = REPO / "configs" / "pretrain"
DATA = ["data.train_shards=shards/train", "data.eval_shards=shards/eval"]


def load(*overrides: str, path: Path | None = PRETRAIN_CONFIGS / "base.yaml") -> PretrainConfig:
    return load_config(path, [*DATA, *overrides])


def error_of(*overrides: str, path: Path | None = PRETRAIN_CONFIGS / "base.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        load(*overrides, path=path)
    return str(info.value)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
@pytest.mark.parametrize("masked", [250, 300, 400])
def test_named_configs_resolve_to_the_ssamba_recipe(size: str, masked: int) -> None:
    cfg = load(path=PRETRAIN_CONFIGS / f"ssamba-{size}-{masked}.yaml")
    encoder = cfg.encoder_config()
    assert encoder.embed_dim == {"tiny": 192, "small": 384, "base": 768}[size]
    assert (encoder.depth, encoder.num_patches, cfg.objective.mask_patch, cfg.objective.eval_mask_patch) == (24, 512, masked, 400)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas) == (1e-4, 5e-8, (0.95, 0.999))
    assert (cfg.schedule.name, cfg.schedule.warmup_steps, cfg.schedule.plateau_factor, cfg.schedule.plateau_patience) == ("plateau", 1000, 0.5, 2)
    assert cfg.train.eval_every == 4000 and cfg.run.dir == f"exp/ssamba-{size}-{masked}"


def test_every_yaml_header_shows_its_launch_command() -> None:
    for path in sorted(PRETRAIN_CONFIGS.glob("*.yaml")):
        header = path.read_text().split("\n\n")[0]
        assert "ssamba pretrain --config configs/pretrain/" in header, path.name


def test_overrides_parse_yaml_values_and_scientific_floats() -> None:
    cfg = load("optim.lr=5e-4", "optim.betas=[0.9,0.98]", "model.depth=2", "train.max_steps=7", "optim.grad_clip=null", "train.compile=true")
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.98)
    assert cfg.encoder_config().depth == 2
    assert cfg.train.max_steps == 7 and cfg.optim.grad_clip is None and cfg.train.compile is True
    assert parse_yaml("lr: 1e-4", "x") == {"lr": 1e-4}


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load("model.preset=ssamba-tiny", "model.depth=2", "features.target_length=128", "objective.mask_patch=20", "objective.eval_mask_patch=20")
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.encoder_config() == cfg.encoder_config()


def test_base_chain_merges_sections_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text("optim: {lr: 0.002, accumulate: 4}\ntrain: {max_steps: 10}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\noptim: {lr: 0.003}\n")
    cfg = load(path=tmp_path / "child.yaml")
    assert (cfg.optim.lr, cfg.optim.accumulate, cfg.train.max_steps) == (0.003, 4, 10)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    assert "circular 'base:' chain" in error_of(path=tmp_path / "loop.yaml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "unknown config key optim.lrr; known keys in optim: lr, weight_decay, betas, eps, grad_clip, accumulate"),
        (["bogus.x=1"], "unknown config section 'bogus'; known sections: run, model, objective, features, data, optim, schedule, train, dist"),
        (["optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["data.batch_size=2.5"], "data.batch_size: expected an integer, got 2.5"),
        (["train.compile=yes please"], "train.compile: expected true/false, got 'yes please'"),
        (["train.precision=fp8"], "train.precision: expected one of 'fp32', 'bf16', 'fp16', got 'fp8'"),
        (["optim.betas=[0.9]"], "optim.betas: expected a list of 2 values, got [0.9]"),
        (["optim.betas=[0.9,1.5]"], "optim.betas[1]: must be in [0, 1), got 1.5"),
        (["data.batch_size=0"], "data.batch_size: must be positive, got 0"),
        (["model.preset=ssamba-huge"], "model.preset: unknown encoder preset 'ssamba-huge'; available: ssamba-tiny, ssamba-small, ssamba-base, aum-tiny, aum-small, aum-base"),
        (["model.dept=2"], "unknown config key model.dept; known keys in model: preset, embed_dim"),
        (["model.depth=3"], "model: EncoderConfig.layer_pairing needs an even depth, got depth=3"),
        (["model.target_length=512"], "model.target_length: the encoder input size comes from the features section; set features.target_length instead"),
        (["features.crop=middle"], "features.crop: expected one of 'start', 'random', got 'middle'"),
        (["objective.mask_patch=511"], "objective.mask_patch=511 is too large: the 8x64 patch grid of features.target_length=1024 allows at most 510 masked patches"),
        (["features.target_length=128"], "objective.mask_patch=400 is too large: the 8x8 patch grid of features.target_length=128 allows at most 62 masked patches"),
        (["schedule.name=cosine"], "schedule.name=cosine needs train.max_steps (the cosine length)"),
        (["train.eval_every=0"], "schedule.name=plateau is driven by evaluation accuracy: set train.eval_every > 0 (or use schedule.name=cosine/constant)"),
        (["data.eval_shards=null"], "train.eval_every=4000 needs data.eval_shards (held-out shards); or set train.eval_every=0"),
        (["data.train_shards=null"], "data.train_shards: required (shards written by `ssamba shards`)"),
        (["train.epochs=null"], "train.max_steps and train.epochs are both null: set at least one"),
        (["dist.engine=deepspeed", "train.compile=true"], "train.compile is not supported with dist.engine=deepspeed; use dist.engine=ddp"),
        (["optim=3"], "override 'optim=3': optim is a section; set one of its keys, e.g. optim.<name>=value"),
        (["optim.lr"], "override 'optim.lr': expected dotted.key=value, e.g. optim.lr=5e-4"),
    ],
)
def test_invalid_configs_raise_one_clear_error(overrides: list[str], message: str) -> None:
    assert error_of(*overrides).startswith(message)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    assert error_of(path=tmp_path / "nope.yaml") == f"config file {tmp_path / 'nope.yaml'} does not exist"
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert error_of(path=tmp_path / "list.yaml") == f"{tmp_path / 'list.yaml'}: expected a mapping of config sections at the top level, got list"


def test_cli_reports_config_errors_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["pretrain", "--config", str(PRETRAIN_CONFIGS / "ssamba-tiny-400.yaml"), *DATA, "optim.lrr=1", f"run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert capsys.readouterr().err.startswith("ssamba pretrain: error: unknown config key optim.lrr")
    assert not (tmp_path / "run").exists()


def _shard_dirs(root: Path, eval_bytes: bytes = b"tar") -> list[str]:
    """A train and an eval shard folder with one (unparsed) shard file each; the overrides naming them."""
    for name, content in (("train", b"tar"), ("eval", eval_bytes)):
        (root / name).mkdir()
        (root / name / "shard-000000.tar").write_bytes(content)
    return [f"data.train_shards={root / 'train'}", f"data.eval_shards={root / 'eval'}", f"run.dir={root / 'run'}"]


def test_cli_dry_run_prints_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["pretrain", "--config", str(PRETRAIN_CONFIGS / "ssamba-small-300.yaml"), *_shard_dirs(tmp_path), "--dry-run"]) == 0
    printed = parse_yaml(capsys.readouterr().out, "stdout")
    assert printed["model"]["preset"] == "ssamba-small" and printed["model"]["embed_dim"] == 384
    assert printed["objective"]["mask_patch"] == 300
    assert build_config(printed).to_dict() == printed


def test_apply_overrides_creates_nested_keys() -> None:
    assert apply_overrides({"optim": {"lr": 1.0}}, ["optim.eps=1e-6", "model.depth=4"]) == {"optim": {"lr": 1.0, "eps": 1e-6}, "model": {"depth": 4}}


# ------------------------------------------------------------------------------------ lr schedule


def test_warmup_is_linear_per_step() -> None:
    schedule = LRSchedule("plateau", 1e-3, 4)
    assert [schedule.lr(step) for step in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_plateau_matches_torch_reduce_lr_on_plateau() -> None:
    """Independent reference: torch's ReduceLROnPlateau(mode='max') on a dummy optimiser."""
    accuracies = [0.10, 0.20, 0.20, 0.19, 0.20001, 0.18, 0.30, 0.29, 0.29, 0.29, 0.29, 0.28, 0.27, 0.31, 0.30]
    ours = LRSchedule("plateau", 1e-4, 0, factor=0.5, patience=2, threshold=1e-4, min_lr=1e-6)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1e-4)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2, threshold=1e-4, min_lr=1e-6)
    for accuracy in accuracies:
        ours.observe(accuracy)
        reference.step(accuracy)
        assert ours.lr(10) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
    assert ours.lr(10) < 1e-4  # it did reduce


def test_plateau_state_round_trips() -> None:
    first = LRSchedule("plateau", 1e-4, 0, patience=0)
    for accuracy in (0.5, 0.4, 0.3):
        first.observe(accuracy)
    second = LRSchedule("plateau", 1e-4, 0, patience=0)
    second.load_state_dict(first.state_dict())
    assert second.lr(5) == first.lr(5) == pytest.approx(2.5e-5)


def test_cosine_goes_from_lr_to_min_lr() -> None:
    schedule = LRSchedule("cosine", 1e-3, 10, total_steps=110, min_lr=1e-5)
    assert schedule.lr(10) == pytest.approx(1e-3)
    assert schedule.lr(60) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert schedule.lr(110) == pytest.approx(1e-5)
    assert schedule.lr(85) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.75)))


# ------------------------------------------------------------------------------------ deepspeed json


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_configs_get_batch_and_precision_from_ours(stage: int) -> None:
    cfg = load("optim.accumulate=3", "optim.grad_clip=5.0", "data.batch_size=8")
    config = deepspeed_config(REPO / "configs" / "deepspeed" / f"zero{stage}.json", batch_size=8, world_size=2, optim=cfg.optim, precision="bf16")
    assert config["zero_optimization"]["stage"] == stage
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"], config["train_batch_size"]) == (8, 3, 48)
    assert config["gradient_clipping"] == 5.0 and config["bf16"] == {"enabled": True}


def test_deepspeed_config_rejects_settings_we_own(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 32, "zero_optimization": {"stage": 1}}))
    with pytest.raises(ValueError, match="remove train_batch_size; they come from the ssamba config"):
        deepspeed_config(path, batch_size=8, world_size=1, optim=load().optim, precision="fp32")


def test_train_shards_mix_sources_with_weights(tmp_path: Path) -> None:
    from ssamba.train.pretrain import count_clips

    cfg = load("data.train_shards={shards/audioset: 0.7, shards/librispeech: 0.3}")
    assert cfg.data.train_shards == {"shards/audioset": 0.7, "shards/librispeech": 0.3}
    assert "data.train_shards.b: mixing weight must be a positive number, got 0" in error_of("data.train_shards={a: 1, b: 0}")
    for name, count in (("a", 30), ("b", 12)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.json").write_text(json.dumps({"count": count}))
    assert count_clips({str(tmp_path / "a"): 0.7, str(tmp_path / "b"): 0.3}) == 42
    assert count_clips({str(tmp_path / "a"): 0.7, str(tmp_path / "missing"): 0.3}) is None


def _dry_run_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli_main(["pretrain", "--config", str(PRETRAIN_CONFIGS / "ssamba-tiny-400.yaml"), *argv, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_dry_run_checks_paths_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _shard_dirs(tmp_path, eval_bytes=b"")
    assert _dry_run_error(capsys, *data) == (
        f"ssamba pretrain: error: data.eval_shards: '{tmp_path / 'eval'}' holds no clips: all 1 shard file(s) are empty (0 bytes)"
    )
    (tmp_path / "eval" / "shard-000000.tar").write_bytes(b"tar")
    missing = [f"data.train_shards={tmp_path / 'nothing'}", *data[1:]]
    assert "data.train_shards: no shards at" in _dry_run_error(capsys, *missing)
    (tmp_path / "index.json").write_text('{"count": 4, "shards": [{"name": "gone.tar"}]}')
    indexed = [f"data.train_shards={tmp_path / 'index.json'}", *data[1:]]
    assert _dry_run_error(capsys, *indexed).endswith(f"data.train_shards: shard {tmp_path / 'gone.tar'} cannot be read (No such file or directory)")
    (tmp_path / "run").write_text("a file")
    assert _dry_run_error(capsys, *data).endswith(f"run.dir: {tmp_path / 'run'} exists and is not a directory")
    (tmp_path / "run").unlink()
    assert _dry_run_error(capsys, *data, "--resume", str(tmp_path / "nope.pt")).endswith(f"--resume {tmp_path / 'nope.pt'}: no such checkpoint file")
    (tmp_path / "notes.txt").write_text("hello")
    assert "notes.txt: not a checkpoint" in _dry_run_error(capsys, *data, "--resume", str(tmp_path / "notes.txt"))
    assert cli_main(["pretrain", "--config", str(PRETRAIN_CONFIGS / "ssamba-tiny-400.yaml"), *data, "--dry-run"]) == 0
    assert not (tmp_path / "run").exists()
