"""`ssamba finetune` end to end on generated labelled sets with a 2-layer, 32-wide encoder.

Runs: single-label (CE, checkpoint ensemble, weight averaging, export round trip), multi-label
(BCE with every augmentation), a run stopped after one step and resumed (same weights as the
uninterrupted run), 2-fold cross-validation with SSAST's fold-average rule, per-second labelling.
Units: data plans and errors, optimiser groups (freeze, layer decay, head lr), balanced sampling
weights, the lr schedule, SpecAugment's fill value, loading an official-layout SSAMBA checkpoint
and one of our pretraining checkpoints into a classifier of another input length and stride.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ssamba
from ssamba.cli import main as cli_main
from ssamba.data.labelled import read_labelled
from ssamba.data.synthetic import CLIP_KINDS, write_demo_corpus
from ssamba.train.config import ConfigError
from ssamba.train.finetune import (
    BatchAugment,
    Predictions,
    balanced_weights,
    build_classifier,
    finetune,
    learning_rate,
    load_finetune_checkpoint,
    parameter_groups,
    plan_folds,
    read_data,
)
from ssamba.train.finetune_config import load_finetune_config
from ssamba.train.scores import classification_scores

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "finetune" / "base.yaml"
MEL, FRAMES = 32, 64
TINY = [
    "model.pretrained=none", "model.preset=ssamba-tiny", "model.embed_dim=32", "model.depth=2", "model.drop_path_rate=0.0",
    f"features.num_mel_bins={MEL}", f"features.target_length={FRAMES}", "data.batch_size=4", "data.num_workers=0",
    "train.log_every=1", "train.device=cpu", "train.epochs=2", "optim.lr=1e-3",
]


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 clips of 0.7 s, 6 per demo kind (tone, chirp, noise_burst, harmonic)."""
    root = tmp_path_factory.mktemp("labelled")
    write_demo_corpus(root, 24, seconds=0.7, seed=0)
    return root


def clip_rows(corpus: Path) -> list[dict[str, str]]:
    with (corpus / "manifest.csv").open() as handle:
        return [{"path": r["path"], "label": r["labels"]} for r in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def single_label(corpus: Path) -> Path:
    """Splits by position in each class: 3 train, 1 valid, 2 test clips per kind; folds alternate."""
    rows, seen = [], {}
    for row in clip_rows(corpus):
        k = seen[row["label"]] = seen.get(row["label"], -1) + 1
        rows.append({**row, "split": ["train", "train", "train", "valid", "test", "test"][k], "fold": str(k % 2 + 1)})
    return write_manifest(corpus / "single.csv", rows)


@pytest.fixture(scope="module")
def multi_label(corpus: Path) -> Path:
    """Every clip gets its kind plus 'long' or 'short' by index parity (two labels per clip)."""
    rows = [{"path": r["path"], "label": f"{r['label']};{'even' if i % 2 == 0 else 'odd'}", "split": ["train", "train", "valid", "test"][i % 4]}
            for i, r in enumerate(clip_rows(corpus))]
    return write_manifest(corpus / "multi.csv", rows)


def run(manifest: Path, run_dir: Path, *extra: str, resume: str = "never") -> dict:
    cfg = load_finetune_config(BASE, [*TINY, f"data.manifest={manifest}", f"run.dir={run_dir}", *extra])
    return finetune(cfg, resume=resume, progress=False)


SINGLE = ["train.loss=ce", "train.metric=acc", "train.ensemble=true", "train.weight_average=[1,2]"]


@pytest.fixture(scope="module")
def single_run(single_label: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run(single_label, run_dir, *SINGLE)
    return run_dir


# ------------------------------------------------------------------------------------ end to end


def test_single_label_run_selects_on_valid_and_tests_once(single_run: Path) -> None:
    results = json.loads((single_run / "results.json").read_text())
    history = results["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    best = max(history, key=lambda h: h["valid"]["accuracy"])  # first of equals, as selection keeps the first
    assert results["selection"] == {"rule": "best valid acc", "epoch": best["epoch"], "metric": "acc"}
    assert results["valid"] == best["valid"]
    assert "test" not in best  # the test split is not looked at before selection
    assert results["clips"] == {"train": 12, "valid": 4, "test": 8}
    assert results["test"]["clips"] == 8 and set(results["test"]["per_class_ap"]) == set(CLIP_KINDS)
    assert all(math.isfinite(h["train_loss"]) for h in history)
    records = [json.loads(line) for line in (single_run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "valid", "test"}
    checkpoint = load_finetune_checkpoint(single_run / "checkpoints" / "best.pt")  # weights_only loading
    assert checkpoint["fold_state"]["epoch"] == best["epoch"] and checkpoint["classes"] == sorted(CLIP_KINDS)


def test_selected_model_export_round_trip(single_run: Path, single_label: Path) -> None:
    model = ssamba.load_classifier(single_run / "model")
    assert model.classes == sorted(CLIP_KINDS) and model.activation == "softmax" and not model.multilabel
    assert model.features.target_length == FRAMES and (single_run / "model" / "classes.txt").read_text().split() == model.classes
    best = load_finetune_checkpoint(single_run / "checkpoints" / "best.pt")["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, best[name]), name
    # the exported model reproduces the run's test scores
    results = json.loads((single_run / "results.json").read_text())
    data = read_labelled(single_label).subset(split="test")
    from ssamba.data.labelled import LabelledAudioDataset

    dataset = LabelledAudioDataset(data, model.features)
    fbank = torch.stack([dataset[i]["fbank"] for i in range(len(dataset))])
    with torch.no_grad():
        scores = model(fbank).softmax(-1).numpy()
    again = classification_scores(scores, data.targets(), multilabel=False)
    assert again["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert again["mAP"] == pytest.approx(results["test"]["mAP"], abs=1e-6)


def test_checkpoint_ensemble_is_the_mean_of_epoch_predictions(single_run: Path) -> None:
    results = json.loads((single_run / "results.json").read_text())
    epochs = [Predictions.load(single_run / "predictions" / f"test-epoch-{e:03d}.npz") for e in (1, 2)]
    mean = (epochs[0].scores + epochs[1].scores) / 2
    expected = classification_scores(mean, epochs[0].targets, multilabel=False)
    assert results["ensemble"]["test"]["mAP"] == pytest.approx(expected["mAP"])
    assert results["ensemble"]["test"]["accuracy"] == pytest.approx(expected["accuracy"])
    first_valid = Predictions.load(single_run / "predictions" / "valid-epoch-001.npz")
    assert results["history"][0]["cum_valid"]["mAP"] == pytest.approx(
        classification_scores(first_valid.scores, first_valid.targets, multilabel=False)["mAP"])


def test_weight_average_is_the_mean_of_epoch_weights(single_run: Path) -> None:
    epochs = [load_file(str(single_run / "epochs" / f"epoch-{e:03d}.safetensors")) for e in (1, 2)]
    averaged = ssamba.load_classifier(single_run / "model-weight-average").state_dict()
    for name, value in averaged.items():
        expected = (epochs[0][name].double() + epochs[1][name].double()) / 2
        assert torch.equal(value, expected.float()), name  # mean in float64, rounded once
    assert not torch.equal(epochs[0]["head.1.weight"], epochs[1]["head.1.weight"])
    results = json.loads((single_run / "results.json").read_text())
    assert results["weight_average"]["epochs"] == [1, 2] and "test" in results["weight_average"]


def test_multilabel_run_with_augmentation_skips_bad_clips(multi_label: Path, tmp_path: Path) -> None:
    import soundfile

    (multi_label.parent / "broken.wav").write_bytes(b"not audio")
    soundfile.write(multi_label.parent / "silent.wav", np.zeros(8000), 16000)
    with multi_label.open() as handle:
        rows = list(csv.DictReader(handle))
    rows += [{"path": "broken.wav", "label": "tone;odd", "split": "train"}, {"path": "silent.wav", "label": "chirp;even", "split": "valid"}]
    manifest = write_manifest(tmp_path / "with_bad.csv", [{**r, "path": str(multi_label.parent / r["path"])} for r in rows])
    results = run(manifest, tmp_path / "run", "train.epochs=1", "augment.freqm=8", "augment.timem=16",
                  "augment.mixup=0.5", "augment.noise=true", "data.balanced_sampling=true", "optim.head_lr=3")
    assert results["skipped_clips"] == {"train": 1, "valid": 1, "test": 0}  # skipped and counted, never relabelled
    assert results["valid"]["clips"] == results["clips"]["valid"] - 1
    assert results["multilabel"] and len(results["classes"]) == len(CLIP_KINDS) + 2
    assert results["selection"]["metric"] == "mAP" and 0.0 <= results["test"]["mAP"] <= 1.0
    assert ssamba.load_classifier(tmp_path / "run" / "model").activation == "sigmoid"


def test_interrupted_run_resumes_to_the_same_weights(single_label: Path, single_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run(single_label, run_dir, *SINGLE, "train.max_minutes=1e-9") == {}  # stops after the first step
    stopped = load_finetune_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert stopped["step"] == 1 and stopped["fold_state"]["batches_in_epoch"] == 1
    with pytest.raises(ConfigError, match="--resume auto"):
        run(single_label, run_dir, *SINGLE)
    run(single_label, run_dir, *SINGLE, resume="auto")
    resumed = load_finetune_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    straight = load_finetune_checkpoint(single_run / "checkpoints" / "last.pt")["model"]
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6)


def test_two_fold_cross_validation_with_fold_average_rule(single_label: Path, tmp_path: Path) -> None:
    results = run(single_label, tmp_path / "cv", "data.folds=2", "train.select=fold_average", "train.loss=ce", "train.metric=acc")
    assert set(results["folds"]) == {"fold-1", "fold-2"}
    for name, fold in results["folds"].items():
        assert (tmp_path / "cv" / name / "results.json").is_file() and (tmp_path / "cv" / name / "model" / "config.json").is_file()
        assert fold["clips"]["test"] == 12 and fold["clips"]["valid"] == 0
    curves = [[h["test"]["accuracy"] for h in fold["history"]] for fold in results["folds"].values()]
    average = np.mean(curves, axis=0)
    rule = results["fold_average"]
    assert rule["average_by_epoch"] == pytest.approx(average.tolist())
    assert rule["epoch"] == int(np.argmax(average)) + 1
    at_epoch = [c[rule["epoch"] - 1] for c in curves]
    assert rule["mean"]["accuracy"] == pytest.approx(np.mean(at_epoch)) and rule["std"]["accuracy"] == pytest.approx(np.std(at_epoch))
    assert json.loads((tmp_path / "cv" / "results.json").read_text())["fold_average"]["epoch"] == rule["epoch"]


def test_per_second_task_trains_and_predicts(corpus: Path, tmp_path: Path) -> None:
    import soundfile

    rng = np.random.default_rng(0)
    tones = {"low": 300.0, "high": 3000.0}
    rows = []
    for i in range(6):
        labels = [("low", "high")[(i + s) % 2] for s in range(3)]
        t = np.arange(16000) / 16000
        wave = np.concatenate([0.5 * np.sin(2 * np.pi * tones[name] * t) + 0.01 * rng.standard_normal(t.size) for name in labels])
        soundfile.write(tmp_path / f"scene{i}.wav", wave, 16000)
        for s, name in enumerate(labels):
            rows.append({"path": f"scene{i}.wav", "label": name, "split": ["train", "train", "train", "train", "valid", "test"][i],
                         "start": str(s), "end": str(s + 1)})
    manifest = write_manifest(tmp_path / "scenes.csv", rows)
    results = run(manifest, tmp_path / "run", "model.task=per_second", "features.target_length=300", "model.fstride=16",
                  "model.tstride=16", "train.loss=ce", "train.metric=acc", "train.epochs=1", "data.batch_size=2")
    assert results["test"]["clips"] == 1 and 0.0 <= results["test"]["accuracy"] <= 1.0
    model = ssamba.load_classifier(tmp_path / "run" / "model")
    assert model.task == "per_second" and model.seconds == 3


# ------------------------------------------------------------------------------------------- units


def tiny_config(manifest: Path, *extra: str):
    return load_finetune_config(BASE, [*TINY, f"data.manifest={manifest}", *extra])


def test_plans_hold_out_valid_groups_and_keep_folds_apart(single_label: Path) -> None:
    cfg = tiny_config(single_label, "data.folds=2", "data.valid_fraction=0.25")
    plans = plan_folds(cfg, read_data(cfg))
    assert [p.name for p in plans] == ["fold-1", "fold-2"]
    for plan in plans:
        train, valid, test = ({c.path for c in part.clips} for part in (plan.train, plan.valid, plan.test))
        assert not (train & valid) and not (train & test) and not (valid & test)
        assert len(train) + len(valid) + len(test) == 24 and len(valid) == 3  # a quarter of the 12 training clips


def test_data_problems_are_errors_before_training(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = clip_rows(corpus)[:8]
    no_train = write_manifest(tmp_path / "no_train.csv", [{**r, "split": "test"} for r in rows])
    with pytest.raises(ConfigError, match="no clip has split=train"):
        plan_folds(tiny_config(no_train), read_data(tiny_config(no_train)))
    leak = write_manifest(tmp_path / "leak.csv", [{**r, "split": "train" if i else "test", "group": "g1" if i < 2 else f"g{i}"} for i, r in enumerate(rows)])
    with pytest.raises(ConfigError, match=r"row 2: group 'g1'"):
        read_data(tiny_config(leak))
    folds = write_manifest(tmp_path / "folds.csv", [{**r, "fold": "1"} for r in rows])
    with pytest.raises(ConfigError, match="data.folds=2 but .* has 1 folds"):
        cfg = tiny_config(folds, "data.folds=2")
        plan_folds(cfg, read_data(cfg))
    multi = write_manifest(tmp_path / "multi.csv", [{**r, "label": r["label"] + ";x", "split": "train"} for r in rows])
    with pytest.raises(ConfigError, match="train.loss=ce needs one label per clip.*row 1"):
        read_data(tiny_config(multi, "train.loss=ce"))
    # the command line reports the same before any training, exit status 2
    code = cli_main(["finetune", "--config", str(BASE), *TINY, f"data.manifest={leak}", f"run.dir={tmp_path / 'r'}"])
    assert code == 2 and "group 'g1'" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_dry_run_prints_config_and_plan(single_label: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["finetune", "--config", str(BASE), *TINY, f"data.manifest={single_label}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pretrained: none" in out and "# run: train 12, valid 4, test 8 clips" in out
    for command in ("finetune", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([command, "--help"])
        assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out


def test_config_errors_name_the_key(single_label: Path) -> None:
    with pytest.raises(ConfigError, match="model.pretrained: required"):
        load_finetune_config(BASE, [f"data.manifest={single_label}"])
    with pytest.raises(ConfigError, match="model.depth: the architecture comes from model.pretrained"):
        load_finetune_config(BASE, [f"data.manifest={single_label}", "model.pretrained=x", "model.depth=2"])
    with pytest.raises(ConfigError, match="train.weight_average"):
        tiny_config(single_label, "train.weight_average=[2,5]")
    with pytest.raises(ConfigError, match="unknown config key optim.momentum"):
        tiny_config(single_label, "optim.momentum=0.9")


def test_parameter_groups_freeze_layer_decay_and_head_lr(single_label: Path) -> None:
    cfg = tiny_config(single_label, "optim.layer_decay=0.5", "optim.head_lr=3")
    model = build_classifier(cfg, 4)
    scale_of = {id(p): g["lr_scale"] for g in parameter_groups(model, cfg) for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["head.1.weight"])] == 3.0
    assert scale_of[id(named["encoder.pos_embed"])] == 0.5**3  # depth 2: embeddings decay^(L+1)
    assert scale_of[id(named["encoder.layers.0.mixer.in_proj.weight"])] == 0.5**2
    assert scale_of[id(named["encoder.layers.1.mixer.in_proj.weight"])] == 0.5
    assert scale_of[id(named["encoder.norm_f.weight"])] == 1.0
    assert len(scale_of) == len(named)
    frozen_cfg = tiny_config(single_label, "model.freeze_encoder=true")
    frozen = build_classifier(frozen_cfg, 4)
    groups = parameter_groups(frozen, frozen_cfg)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in frozen.head.parameters()}
    assert not any(p.requires_grad for p in frozen.encoder.parameters())


def test_balanced_weights_follow_label_frequency(tmp_path: Path, corpus: Path) -> None:
    rows = clip_rows(corpus)[:4]
    labels = ["a", "a;b", "a", "c"]
    data = read_labelled(write_manifest(tmp_path / "m.csv", [{"path": r["path"], "label": lab} for r, lab in zip(rows, labels)]))
    w = {"a": 1000 / 3.01, "b": 1000 / 1.01, "c": 1000 / 1.01}
    np.testing.assert_allclose(balanced_weights(data), [w["a"], w["a"] + w["b"], w["a"], w["c"]], rtol=1e-6)


def test_learning_rate_schedule(single_label: Path) -> None:
    cfg = tiny_config(single_label, "schedule.warmup_steps=4", "schedule.start=2", "schedule.step=3", "schedule.gamma=0.5", "optim.lr=1.0")
    assert [learning_rate(cfg, s, 0, 100) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # MultiStepLR(milestones=range(2, 1000, 3)) stepped per epoch: decays after epochs 2, 5, 8, ...
    assert [learning_rate(cfg, 50, e, 100) for e in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    cosine = tiny_config(single_label, "schedule.name=cosine", "schedule.warmup_steps=0", "optim.lr=1.0", "schedule.min_lr=0.1")
    assert learning_rate(cosine, 0, 0, 10) == pytest.approx(1.0)
    assert learning_rate(cosine, 5, 0, 10) == pytest.approx(0.55)
    assert learning_rate(cosine, 10, 3, 10) == pytest.approx(0.1)


def test_spec_augment_fills_with_normalised_zero(single_label: Path) -> None:
    cfg = tiny_config(single_label, "augment.freqm=8", "augment.timem=20")
    augment = BatchAugment(cfg, seed=3)
    fbank = torch.full((2, FRAMES, MEL), 7.0)
    out, targets = augment(fbank, torch.eye(2))
    fill = (0.0 - cfg.features.mean) / (2 * cfg.features.std)
    masked = out != 7.0
    assert masked.any() and torch.allclose(out[masked], torch.tensor(fill))
    assert torch.equal(targets, torch.eye(2))


# ------------------------------------------------------------------------ checkpoints into a classifier


def test_official_checkpoint_into_classifier_with_other_length_and_stride(tmp_path: Path, single_label: Path) -> None:
    from test_interop import MEL as OFFICIAL_MEL
    from test_interop import official_ssamba_state

    state = official_ssamba_state()
    torch.save(state, tmp_path / "official.pth")
    cfg = load_finetune_config(BASE, [f"model.pretrained={tmp_path / 'official.pth'}", f"data.manifest={single_label}",
                                      f"features.num_mel_bins={OFFICIAL_MEL}", "features.target_length=40"])
    model = build_classifier(cfg, 5)
    encoder = model.encoder
    assert (encoder.config.fstride, encoder.config.tstride, encoder.config.target_length) == (10, 10, 40)
    assert encoder.grid == (4, 3)  # 48 bins, 40 frames, 16x16 patches at stride 10
    source = state["module.v.pos_embed"]  # (1, 1 + 3 x 4, D): CLS + frequency rows of 4 time patches
    pos = encoder.pos_embed.detach()
    assert pos.shape == (1, 1 + 12, source.shape[-1])
    assert torch.equal(pos[:, 0], source[:, 0])  # CLS kept
    # time 4 -> 3: a centred crop keeps columns 1..3 of each row (start 4 // 2 - 3 // 2 = 1) unchanged
    src_grid = source[0, 1:].reshape(3, 4, -1)
    cropped = src_grid[:, 1:4]
    # frequency 3 -> 4: bilinear (align_corners=False) interpolation of the cropped rows
    rows = torch.nn.functional.interpolate(cropped.permute(2, 0, 1)[None], size=(4, 3), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(pos[0, 1:].reshape(4, 3, -1), rows.permute(1, 2, 0))
    assert torch.equal(encoder.patch_embed.proj.weight, state["module.v.patch_embed.proj.weight"])
    with pytest.raises(ConfigError, match="features.num_mel_bins=128"):
        build_classifier(load_finetune_config(BASE, [f"model.pretrained={tmp_path / 'official.pth'}", f"data.manifest={single_label}"]), 5)


def test_interpolation_is_exact_on_a_linear_ramp() -> None:
    from ssamba.interop.checkpoints import adapt_pos_embed

    f_src, t_src, t_dst = 2, 4, 7
    ramp = torch.arange(t_src, dtype=torch.float32).repeat(f_src)  # value = time index
    pos = torch.cat([torch.tensor([-5.0]), ramp]).view(1, -1, 1)
    out = adapt_pos_embed(pos, 1, (f_src, t_src), (f_src, t_dst))
    # align_corners=False: output column j samples source coordinate (j + 0.5) * t_src / t_dst - 0.5, clamped
    coord = np.clip((np.arange(t_dst) + 0.5) * t_src / t_dst - 0.5, 0, t_src - 1)
    np.testing.assert_allclose(out[0, 1:, 0].view(f_src, t_dst).numpy(), np.tile(coord, (f_src, 1)), atol=1e-6)
    assert out[0, 0, 0] == -5.0


def test_pretraining_checkpoint_into_classifier_with_other_length_and_stride(tmp_path: Path, single_label: Path) -> None:
    from ssamba.models.encoder import AudioMambaEncoder, preset_config
    from ssamba.models.masked import MaskedPatchModel, ObjectiveConfig
    from ssamba.train.engine import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    torch.manual_seed(0)
    encoder_config = preset_config("ssamba-tiny", embed_dim=32, depth=2, num_mel_bins=MEL, target_length=FRAMES)
    pretrained = MaskedPatchModel(AudioMambaEncoder(encoder_config), ObjectiveConfig(mask_patch=3, eval_mask_patch=3))
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": pretrained.state_dict(),
               "encoder_config": encoder_config.to_dict(), "step": 10}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(payload, tmp_path / "run" / "checkpoints" / "last.pt")
    cfg = load_finetune_config(BASE, [f"model.pretrained={tmp_path / 'run'}", f"data.manifest={single_label}",
                                      f"features.num_mel_bins={MEL}", "features.target_length=100", "model.preset=ssamba-tiny"])
    with pytest.raises(ConfigError, match="model.preset=ssamba-tiny .width 192"):
        build_classifier(cfg, 3)
    cfg = load_finetune_config(BASE, [f"model.pretrained={tmp_path / 'run'}", f"data.manifest={single_label}",
                                      f"features.num_mel_bins={MEL}", "features.target_length=100"])
    model = build_classifier(cfg, 3)
    assert model.encoder.grid == (2, 9) and model.encoder.config.target_length == 100
    for name, value in pretrained.encoder.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(model.encoder.state_dict()[name], value), name
    with torch.no_grad():
        assert model(torch.randn(2, 100, MEL)).shape == (2, 3)


# ------------------------------------------------------------------------------------ multi-process (slow)


@pytest.mark.slow
def test_two_processes_fine_tune_and_gather_predictions(single_label: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ssamba", "finetune",
               "--config", str(BASE), "--no-progress", *TINY, f"data.manifest={single_label}", f"run.dir={run_dir}",
               "train.loss=ce", "train.metric=acc", "optim.accumulate=2", "data.batch_size=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    results = json.loads((run_dir / "results.json").read_text())
    valid = Predictions.load(run_dir / "predictions" / "valid-epoch-002.npz")
    assert valid.index.tolist() == [0, 1, 2, 3]  # both processes' shares gathered, in clip order
    # the gathered test scores equal a single-process evaluation of the exported model
    model = ssamba.load_classifier(run_dir / "model")
    from ssamba.data.labelled import LabelledAudioDataset

    data = read_labelled(single_label).subset(split="test")
    dataset = LabelledAudioDataset(data, model.features)
    with torch.no_grad():
        scores = model(torch.stack([dataset[i]["fbank"] for i in range(len(dataset))])).softmax(-1).numpy()
    assert results["test"]["mAP"] == pytest.approx(classification_scores(scores, data.targets(), multilabel=False)["mAP"], abs=1e-6)
