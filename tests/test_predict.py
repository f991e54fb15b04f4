"""Classifier export round trip and `ssamba predict` (clip and per-second models, bad files skipped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import ssamba
from ssamba.audio.fbank import FeatureConfig
from ssamba.cli import main as cli_main
from ssamba.interop.checkpoints import CheckpointError
from ssamba.interop.classifier import export_classifier
from ssamba.models.classifier import AudioMambaClassifier
from ssamba.models.encoder import AudioMambaEncoder, preset_config

MEL, FRAMES, RATE = 32, 100, 16000
CLASSES = ["bird", "car", "dog"]


def tiny_classifier(task: str = "clip", frames: int = FRAMES) -> AudioMambaClassifier:
    torch.manual_seed(0)
    encoder = AudioMambaEncoder(preset_config("ssamba-tiny", embed_dim=32, depth=2, num_mel_bins=MEL, target_length=frames,
                                              fstride=10, tstride=10, drop_path_rate=0.0))
    options = {"task": "per_second", "seconds_per_label": 1.0} if task == "per_second" else {}
    model = AudioMambaClassifier(encoder, len(CLASSES), head="ssamba", **options)
    with torch.no_grad():  # a head that separates the classes clearly
        model.head[1].weight.normal_(0, 1.0)
    return model.eval()


def features(frames: int = FRAMES) -> FeatureConfig:
    return FeatureConfig(num_mel_bins=MEL, target_length=frames)


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.4 * np.sin(2 * np.pi * freq * t)


def test_export_and_load_classifier_round_trip(tmp_path: Path) -> None:
    model = tiny_classifier()
    out = export_classifier(model, tmp_path / "clf", classes=CLASSES, features=features(), multilabel=True,
                            display_names=["Bird", "Car", "Dog"], provenance={"epoch": 3})
    loaded = ssamba.load_classifier(out)
    assert loaded.classes == CLASSES and loaded.display_names == ["Bird", "Car", "Dog"] and loaded.multilabel
    assert loaded.features == features() and loaded.activation == "sigmoid" and not loaded.training
    fbank = torch.randn(2, FRAMES, MEL)
    with torch.no_grad():
        assert torch.equal(loaded(fbank), model(fbank))
    assert json.loads((out / "config.json").read_text())["provenance"]["epoch"] == 3
    with pytest.raises(FileExistsError, match="already holds"):
        export_classifier(model, out, classes=CLASSES, features=features(), multilabel=True)
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        export_classifier(model, tmp_path / "other", classes=CLASSES[:2], features=features(), multilabel=True)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "format": "ssamba-encoder"}))
    with pytest.raises(CheckpointError, match="use ssamba.load_encoder"):
        ssamba.load_classifier(out)


def test_per_second_classifier_round_trip(tmp_path: Path) -> None:
    model = tiny_classifier("per_second", frames=300)
    with pytest.raises(ValueError, match="seconds_per_label"):
        export_classifier(model, tmp_path / "bad", classes=CLASSES, features=features(300), multilabel=False)
    out = export_classifier(model, tmp_path / "clf", classes=CLASSES, features=features(300), multilabel=False,
                            activation="softmax", seconds_per_label=1.0)
    loaded = ssamba.load_classifier(out)
    assert loaded.task == "per_second" and loaded.seconds == 3
    fbank = torch.randn(1, 300, MEL)
    with torch.no_grad():
        assert torch.equal(loaded(fbank), model(fbank))


def test_predict_prints_top_classes_and_skips_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_classifier()
    export_classifier(model, tmp_path / "clf", classes=CLASSES, features=features(), multilabel=False, activation="softmax")
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", tone(0.8), RATE)
    soundfile.write(audio / "long.wav", tone(2.5, 900.0), RATE)
    soundfile.write(audio / "silent.wav", np.zeros(RATE), RATE)
    (audio / "broken.wav").write_bytes(b"not audio")
    code = cli_main(["predict", str(audio), "--model", str(tmp_path / "clf"), "--top", "2", "--jsonl", str(tmp_path / "p.jsonl")])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{audio / 'a.wav'}: ") and "(3 windows averaged)" in lines[1]
    assert "skipped 2 file(s)" in captured.err and "silent.wav (silent)" in captured.err and "broken.wav (unreadable" in captured.err
    # the printed scores are the model's softmax on the clip's features
    wave = torch.from_numpy(tone(0.8)).float()
    with torch.no_grad():
        expected = model(features().features(wave)[None]).softmax(-1)[0]
    top = expected.topk(2)
    shown = lines[0].split(": ", 1)[1]
    assert shown == ", ".join(f"{CLASSES[i]} {v:.3f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["windows"] for r in records] == [1, 3] and len(records[0]["top"]) == 2


def test_predict_per_second_model_prints_each_second(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_classifier("per_second", frames=300)
    export_classifier(model, tmp_path / "clf", classes=CLASSES, features=features(300), multilabel=False,
                      activation="softmax", seconds_per_label=1.0)
    soundfile.write(tmp_path / "scene.wav", np.concatenate([tone(1.0, 300.0), tone(1.2, 3000.0)]), RATE)
    assert cli_main(["predict", str(tmp_path / "scene.wav"), "--model", str(tmp_path / "clf"), "--top", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{tmp_path / 'scene.wav'}:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["0-1 s", "1-2 s", "2-3 s"]  # 2.2 s of audio: 3 seconds


def test_predict_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["predict", "x.wav", "--model", str(tmp_path / "missing")]) == 2
    assert "no config.json" in capsys.readouterr().err
    export_classifier(tiny_classifier(), tmp_path / "clf", classes=CLASSES, features=features(), multilabel=False)
    (tmp_path / "bad.wav").write_bytes(b"nope")
    assert cli_main(["predict", str(tmp_path / "bad.wav"), "--model", str(tmp_path / "clf")]) == 1
    assert "no file could be classified" in capsys.readouterr().err
