"""`ssamba probe`: embeddings, cache, evaluation plans (splits, folds, groups), the logistic-regression fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MEL_BINS, tiny_export, write_labelled_clips

from ssamba.cli import main as cli
from ssamba.data.labelled import read_labelled
from ssamba.models.encoder import AudioMambaEncoder, preset_config
from ssamba.train.probe import LogmelEmbedder, fit_probe, make_plan, run_probe

FRAMES = 96  # 0.96 s of a 1 s clip: 6 time x 2 frequency patches for the 32-bin tiny encoder
RANDOM_TINY = f"random:ssamba-tiny:depth=2,embed_dim=32,num_mel_bins={TINY_MEL_BINS}"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("probe_clips")
    return root, write_labelled_clips(root, per_class=8, seconds=1.0, seed=1)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("probe_encoder"), frames=FRAMES)


def _manifest(root: Path, name: str, rows: list[tuple[str, str]], extra: dict[str, list[str]]) -> Path:
    header = ["path", "label", *extra]
    lines = [",".join(header)] + [",".join([p, label, *(extra[c][i] for c in extra)]) for i, (p, label) in enumerate(rows)]
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _splits(rows: list[tuple[str, str]]) -> list[str]:
    # per class: clips 0-3 train, 4-5 valid, 6-7 test (rows cycle through the three classes)
    return [("train", "train", "train", "train", "valid", "valid", "test", "test")[i // 3] for i in range(len(rows))]


def _probe(*args: str) -> dict:
    output = Path(args[args.index("--output") + 1])
    assert cli(["probe", *args, "--quiet"]) == 0
    return json.loads(output.read_text())


def test_probe_with_splits_separates_classes_and_caches(clips, encoder_dir: Path, tmp_path: Path) -> None:
    root, rows = clips
    manifest = _manifest(root, "split.csv", rows, {"split": _splits(rows)})
    args = ["--manifest", str(manifest), "--encoder", str(encoder_dir), "--encoder", "logmel",
            "--target-length", str(FRAMES), "--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "r.json")]
    first = _probe(*args)
    assert first["classes"] == ["chirp", "noise", "tone"] and first["task"] == "single"
    for result, readout in zip(first["encoders"], ("last", "logmel")):
        (name,) = result["readouts"]
        counts = result["readouts"][name]
        assert name == readout and counts["embedded"] == 24 and counts["cached"] == 0
        assert not result["skipped"] and "readout" not in result["evaluations"][0]
        (evaluation,) = result["evaluations"]
        assert evaluation["train_clips"] == 12 and evaluation["test"]["clips"] == 6 and evaluation["valid"]["clips"] == 6
        assert evaluation["C"] in [float(c) for c in evaluation["selection"]]
        assert counts["clips_per_second"] > 0
    logmel = first["encoders"][1]
    assert logmel["readouts"]["logmel"]["dim"] == 192 and logmel["summary"]["test"]["mean"] == 1.0  # trivially separable
    encoder = first["encoders"][0]
    assert encoder["readouts"]["last"]["dim"] == 32 and encoder["summary"]["test"]["mean"] >= 2 / 3
    second = _probe(*args)
    for before, after in zip(first["encoders"], second["encoders"]):
        (counts,) = after["readouts"].values()
        assert counts["embedded"] == 0 and counts["cached"] == 24
        assert after["summary"] == before["summary"]


def test_probe_groups_folds_and_random_encoder(clips, tmp_path: Path) -> None:
    root, rows = clips
    groups = [f"g{i // 2}" for i in range(len(rows))]  # pairs of consecutive clips share a group
    manifest = _manifest(root, "groups.csv", rows, {"group": groups})
    data = read_labelled(manifest)
    plan = make_plan(data, folds=2, seed=0)
    assert len(plan) == 2
    for evaluation in plan:
        train_groups = {groups[i] for i in evaluation.train}
        assert not train_groups & {groups[i] for i in evaluation.test["test"]}
    covered = np.sort(np.concatenate([e.test["test"] for e in plan]))
    np.testing.assert_array_equal(covered, np.arange(len(rows)))
    args = ["--manifest", str(manifest), "--folds", "2", "--encoder", RANDOM_TINY, "--target-length", str(FRAMES),
            "--layer", "all", "--pooling", "both", "--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "r.json")]
    first = _probe(*args)
    (result,) = first["encoders"]
    assert result["readouts"]["all"]["dim"] == 32 * 2 * 1  # depth 2 with layer pairing: one pair; mean + CLS
    assert len(result["summary"]["test"]["values"]) == 2 and result["readouts"]["all"]["embedded"] == 24
    # seeded random init: same weights, same cache entries
    assert _probe(*args)["encoders"][0]["readouts"]["all"]["cached"] == 24
    other_seed = _probe(*args[:-2], "--seed", "1", "--output", str(tmp_path / "r1.json"))
    assert other_seed["encoders"][0]["readouts"]["all"]["embedded"] == 24


def test_probe_frequency_row_readout_from_the_command_line(clips, tmp_path: Path) -> None:
    root, rows = clips
    manifest = _manifest(root, "freq.csv", rows, {"split": _splits(rows)})
    report = _probe("--manifest", str(manifest), "--encoder", RANDOM_TINY, "--target-length", str(FRAMES),
                    "--pooling", "freq", "--no-cache", "--output", str(tmp_path / "r.json"))
    (result,) = report["encoders"]
    assert result["readouts"]["last"]["dim"] == 2 * 32  # 2 frequency rows x width 32
    assert result["summary"]["test"]["mean"] >= 2 / 3  # tones, noise and chirps differ in their spectra


def test_several_readouts_keep_the_one_that_wins_on_validation(clips) -> None:
    root, rows = clips
    data = read_labelled(_manifest(root, "readouts.csv", rows, {"split": _splits(rows)}))
    plan = make_plan(data)
    rng = np.random.default_rng(0)
    signal = (data.targets() * 3 + rng.normal(size=(len(data), 3))).astype(np.float32)  # the class, plus noise
    noise = rng.normal(size=(len(data), 3)).astype(np.float32)
    alone = run_probe(data, signal, plan, multilabel=False)
    chosen = run_probe(data, {"noise": noise, "signal": signal}, plan, multilabel=False)
    (evaluation,) = chosen["evaluations"]
    scores = evaluation["readout_selection"]
    assert evaluation["readout"] == "signal" and scores["signal"] > scores["noise"]
    assert chosen["summary"] == alone["summary"] and evaluation["C"] == alone["evaluations"][0]["C"]
    for order in (("a", "b"), ("b", "a")):  # a tie goes to the first readout listed
        tied = run_probe(data, {order[0]: signal, order[1]: signal.copy()}, plan, multilabel=False)
        assert tied["evaluations"][0]["readout"] == order[0]


def test_probe_chooses_the_layer_from_the_command_line(clips, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, rows = clips
    manifest = _manifest(root, "layers.csv", rows, {"split": _splits(rows)})
    four_blocks = f"random:ssamba-tiny:depth=4,embed_dim=32,num_mel_bins={TINY_MEL_BINS}"  # two block pairs
    args = ["--manifest", str(manifest), "--encoder", four_blocks, "--encoder", "logmel",
            "--target-length", str(FRAMES), "--no-cache", "--output", str(tmp_path / "r.json")]
    report = _probe(*args, "--layer", "last", "all")
    assert report["readout"]["layers"] == ["last", "all"]
    encoder, logmel = report["encoders"]
    assert {name: r["dim"] for name, r in encoder["readouts"].items()} == {"last": 32, "all": 64}
    (evaluation,) = encoder["evaluations"]
    scores = evaluation["readout_selection"]
    assert set(scores) == {"last", "all"} and scores[evaluation["readout"]] == max(scores.values())
    assert scores[evaluation["readout"]] == evaluation["selection"][str(evaluation["C"])]
    assert list(logmel["readouts"]) == ["logmel"] and "readout" not in logmel["evaluations"][0]
    assert cli(["probe", *args, "--layer", "last", "last"]) == 2
    assert "--layer lists a readout twice: last last" in capsys.readouterr().err


def test_group_leak_and_fold_errors(clips, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, rows = clips
    splits = _splits(rows)
    leak = ["shared" if i in (0, len(rows) - 1) else f"g{i}" for i in range(len(rows))]
    manifest = _manifest(root, "leak.csv", rows, {"split": splits, "group": leak})
    assert cli(["probe", "--manifest", str(manifest), "--encoder", "logmel", "--output", str(tmp_path / "r.json")]) == 2
    assert re.search(r"leak.csv row 24: group 'shared' is in split 'test' and in split 'train' \(row 1\)", capsys.readouterr().err)
    assert not (tmp_path / "r.json").exists()
    folds = _manifest(root, "folds.csv", rows, {"fold": [str(1 + i % 2) for i in range(len(rows))]})
    with pytest.raises(ValueError, match=r"folds.csv: fold '3' is empty \(folds present: 1, 2\)"):
        make_plan(read_labelled(folds), folds=3)
    assert [e.name for e in make_plan(read_labelled(folds))] == ["fold 1", "fold 2"]
    plain = _manifest(root, "plain.csv", rows, {})
    with pytest.raises(ValueError, match="no split or fold column; pass --folds N"):
        make_plan(read_labelled(plain))
    with pytest.raises(ValueError, match="--folds 30 but only 24 groups; fold 25 would be empty"):
        make_plan(read_labelled(plain), folds=30)


def test_fit_probe_multilabel_and_c_selection() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.4).astype(np.float32)
    y[y.sum(1) == 0, 0] = 1
    x = y @ rng.standard_normal((3, 8)) * 2 + rng.standard_normal((120, 8))
    scaler, model, c, selection = fit_probe(x[:80], y[:80], multilabel=True, valid=(x[80:100], y[80:100]))
    assert set(selection) == {1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0} and selection[c] == max(selection.values())
    scores = model.predict_proba(scaler.transform(x[100:]))
    from sklearn.metrics import average_precision_score

    assert average_precision_score(y[100:], scores, average="macro") > 0.9
    # inner group folds when there is no validation split
    _, _, _, inner = fit_probe(x[:80], y[:80], multilabel=True, groups=[str(i // 4) for i in range(80)], c_grid=[0.1, 1.0])
    assert set(inner) == {0.1, 1.0} and all(0 < v <= 1 for v in inner.values())


def test_fit_probe_returns_the_model_that_won_the_selection() -> None:
    # 200 noisy dimensions for 150 clips: weakly regularised fits depend on where the solver starts, so a refit
    # from scratch at the chosen C can score differently on the validation clips than the fit that chose it
    rng = np.random.default_rng(0)
    classes = np.eye(5)
    centres = rng.normal(size=(5, 200)) * 0.3
    y_train, y_valid = rng.integers(0, 5, 150), rng.integers(0, 5, 100)
    x_train = centres[y_train] + rng.normal(size=(150, 200))
    x_valid = centres[y_valid] + rng.normal(size=(100, 200))
    scaler, model, c, selection = fit_probe(x_train, classes[y_train], multilabel=False, valid=(x_valid, classes[y_valid]))
    assert c > min(selection)  # the case where the start matters: a path of warm-started fits before the chosen C
    accuracy = float((model.predict(scaler.transform(x_valid)) == y_valid).mean())
    assert accuracy == selection[c]


def test_hidden_states_end_with_the_default_output() -> None:
    torch.manual_seed(0)
    for preset, count in (("ssamba-tiny", 2), ("aum-tiny", 4)):
        encoder = AudioMambaEncoder(preset_config(preset, embed_dim=32, depth=4, num_mel_bins=32, target_length=64)).eval()
        fbank = torch.randn(2, 64, 32)
        with torch.no_grad():
            states = encoder.hidden_states(fbank)
            output = encoder(fbank)
        assert encoder.num_hidden_states == count and len(states) == count
        torch.testing.assert_close(states[-1], output, rtol=0, atol=0)
        assert all(s.shape == output.shape for s in states) and not torch.equal(states[0], states[-1])


def test_multilabel_probe_reports_map(clips, tmp_path: Path) -> None:
    root, rows = clips
    tags = {"tone": "tonal", "chirp": "tonal;sweep", "noise": "noisy"}
    manifest = _manifest(root, "multi.csv", [(p, tags[label]) for p, label in rows], {"split": _splits(rows)})
    report = _probe("--manifest", str(manifest), "--encoder", "logmel", "--task", "multilabel", "--no-cache",
                    "--output", str(tmp_path / "r.json"))
    assert report["task"] == "multilabel" and report["classes"] == ["noisy", "sweep", "tonal"]
    (result,) = report["encoders"]
    assert result["metric"] == "mAP" and result["summary"]["test"]["mean"] > 0.9
    assert set(result["evaluations"][0]["test"]["per_class_ap"]) == {"noisy", "sweep", "tonal"}


@pytest.mark.parametrize("pooling", ["mean", "freq"])
def test_window_readout_averages_windows_by_columns(encoder_dir: Path, tmp_path: Path, pooling: str) -> None:
    import soundfile

    from ssamba.audio.fbank import normalize
    from ssamba.train.probe import EmbeddingCache, Readout, embed_set, load_embedder

    windows = load_embedder(str(encoder_dir), Readout(clip="windows", pooling=pooling), window_seconds=1.0)
    padded = load_embedder(str(encoder_dir), Readout(clip="pad", pooling=pooling), target_length=100)
    features = windows.features
    assert features.target_length == 100 and windows.windowed.columns_per_window == 6
    torch.manual_seed(0)
    short = torch.randn(16000) * 0.1
    w_in, w_columns = windows.prepare(short)
    p_in, p_columns = padded.prepare(short)
    assert w_in.shape[0] == 1 and w_columns.tolist() == p_columns.tolist() == [6.0]
    torch.testing.assert_close(windows.embed_windows(w_in, w_columns), padded.embed_windows(p_in, p_columns),
                               rtol=1e-5, atol=1e-6)
    # 2.5 s: 248 frames, 16 column centres inside the clip -> windows at frames 0, 96, 192 holding 6, 6 and 4 columns
    long = torch.randn(40000) * 0.1
    inputs, columns = windows.prepare(long)
    assert columns.tolist() == [6.0, 6.0, 4.0]
    raw = torch.nn.functional.pad(features.raw_fbank(long), (0, 0, 0, 292 - 248))
    by_hand = torch.stack([normalize(raw[96 * k : 96 * k + 100], features.mean, features.std) for k in range(3)])
    torch.testing.assert_close(inputs, by_hand)
    expected = (windows.embed_windows(by_hand, columns) * columns[:, None]).sum(0) / 16
    soundfile.write(tmp_path / "long.wav", long.numpy(), 16000, subtype="FLOAT")
    (tmp_path / "m.csv").write_text("path,label\nlong.wav,x\n")
    run = embed_set(read_labelled(tmp_path / "m.csv"), windows, EmbeddingCache(None, windows.space), batch_size=2, progress=False)
    torch.testing.assert_close(torch.from_numpy(run.vectors[0]), expected, rtol=1e-5, atol=1e-6)


def test_frequency_row_readout_averages_each_row_over_the_clip_columns() -> None:
    from ssamba.train.probe import Readout, load_embedder

    embedder = load_embedder(RANDOM_TINY, Readout(layer="all", pooling="freq"), target_length=FRAMES)
    encoder = embedder.encoder
    rows, cols = encoder.grid
    assert (rows, cols) == (2, 6) and encoder.cls_index is not None
    # 0.5 s: column t's centre lies at t x 2560 + 1400 samples, so columns 0-2 lie inside 8000 samples
    wave = torch.randn(8000, generator=torch.Generator().manual_seed(0)) * 0.1
    windows, columns = embedder.prepare(wave)
    assert columns.tolist() == [3.0]
    with torch.no_grad():
        states = encoder.hidden_states(windows)
    inside, everywhere = [], []
    for state in states:
        patches = torch.cat([state[:, : encoder.cls_index], state[:, encoder.cls_index + 1 :]], dim=1).double()
        grid = patches.reshape(rows, cols, -1)  # frequency-major: token f x cols + t
        inside.append(torch.stack([grid[f, :3].mean(0) for f in range(rows)]).flatten())
        everywhere.append(torch.stack([grid[f].mean(0) for f in range(rows)]).flatten())
    vector = embedder.embed_windows(windows, columns)
    assert vector.shape == (1, len(states) * rows * 32)
    torch.testing.assert_close(vector[0].double(), torch.cat(inside), rtol=1e-5, atol=1e-6)
    without_counts = embedder.embed_windows(windows)  # every column averaged, padding included
    torch.testing.assert_close(without_counts[0].double(), torch.cat(everywhere), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(vector, without_counts, atol=1e-3)


def test_probe_reads_ssast_json_lists_per_split(clips, tmp_path: Path) -> None:
    root, rows = clips
    mids = {"chirp": "/m/c", "noise": "/m/n", "tone": "/m/t"}
    (tmp_path / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/t,Tone\n1,/m/n,Noise\n2,/m/c,Chirp\n")
    for split in ("train", "test"):
        chosen = [r for r, s in zip(rows, _splits(rows)) if s == split]
        entries = [{"wav": str(root / p), "labels": mids[label]} for p, label in chosen]
        (tmp_path / f"{split}.json").write_text(json.dumps({"data": entries}))
    report = _probe("--manifest", f"train={tmp_path / 'train.json'}", "--manifest", f"test={tmp_path / 'test.json'}",
                    "--class-table", str(tmp_path / "class_labels_indices.csv"), "--encoder", "logmel", "--no-cache",
                    "--output", str(tmp_path / "r.json"))
    assert report["classes"] == ["/m/t", "/m/n", "/m/c"] and report["clips"] == 18
    (evaluation,) = report["encoders"][0]["evaluations"]
    assert evaluation["train_clips"] == 12 and "valid" not in evaluation and evaluation["test"]["accuracy"] == 1.0


def test_logmel_baseline_statistics_match_numpy() -> None:
    baseline = LogmelEmbedder()
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    wave = torch.sin(torch.arange(16000) * 0.3) * 0.5 + 0.01 * noise
    windows, weights = baseline.prepare(wave)
    assert windows.shape == (1, 98, 64) and weights.tolist() == [1.0]
    frames = windows[0].double().numpy()
    expected = np.concatenate([frames.mean(0), frames.std(0), np.abs(np.diff(frames, axis=0)).mean(0)])
    np.testing.assert_allclose(baseline.embed_windows(windows)[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    single = baseline.embed_windows(windows[:, :1])
    assert torch.isfinite(single).all() and single[0, 128:].abs().max() == 0  # one frame: no change, not NaN
