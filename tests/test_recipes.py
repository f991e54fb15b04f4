"""Downstream recipes: every prepare.sh on a fake tree laid out as the owners distribute the data,
the launchers end to end on one fold, every config and README."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import soundfile

import recipe_trees as trees
from conftest import tiny_export
from ssamba.recipes import RECIPES, fold_manifest, results_table
from ssamba.train.finetune_config import load_finetune_config

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    """Run a recipe script the way a user does (bash, from the repository root)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def prepare(name: str, source: Path, out: Path, *extra: object) -> list[dict[str, str]]:
    run_script(f"finetune/{name}/prepare.sh", source, out, "--partial", "--workers", 1, *extra)
    return read_manifest(out)


def read_manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def check_prepared(out: Path, rows: list[dict[str, str]]) -> None:
    """What every prepared folder must hold: readable 16 kHz mono audio, classes.txt, finite stats."""
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == sorted(classes)
    for row in rows:
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else out / row["path"]
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels) == (16000, 1), row
        assert all(label in classes for label in row["label"].split(";")), row
    stats = json.loads((out / "stats.json").read_text())
    assert math.isfinite(stats["mean"]) and stats["std"] > 0 and stats["clips"] > 0


# ------------------------------------------------------------------------------------ ESC-50


def test_esc50_prepare_folds_groups_and_resume(tmp_path):
    source = trees.make_esc50(tmp_path / "download")
    out = tmp_path / "esc50"
    rows = prepare("esc50", source, out)
    assert list(rows[0]) == ["path", "label", "fold", "group"]
    assert len(rows) == 20 and {r["fold"] for r in rows} == {"1", "2", "3", "4", "5"}
    assert {r["label"] for r in rows} == {"dog", "thunderstorm"}
    first = next(r for r in rows if r["path"] == "audio/1-100100-A-0.flac")
    assert (first["label"], first["fold"], first["group"]) == ("dog", "1", "100100")
    check_prepared(out, rows)
    flac = out / first["path"]
    assert soundfile.info(str(flac)).format == "FLAC"
    # a rerun is idempotent and does not rewrite finished audio
    before, manifest_before = flac.stat().st_mtime_ns, (out / "manifest.csv").read_text()
    assert read_manifest(out) == prepare("esc50", source, out)
    assert flac.stat().st_mtime_ns == before and (out / "manifest.csv").read_text() == manifest_before


def test_esc50_counts_are_checked_without_partial(tmp_path):
    source = trees.make_esc50(tmp_path / "download", clips_per_fold_and_class=1)
    result = run_script("finetune/esc50/prepare.sh", source, tmp_path / "out", check=False)
    assert result.returncode == 1
    assert "esc50.csv rows: found 10, expected 2000" in result.stderr and "--partial" in result.stderr
    (source / "meta" / "esc50.csv").unlink()
    result = run_script("finetune/esc50/prepare.sh", source, tmp_path / "out", "--partial", check=False)
    assert result.returncode == 1 and "missing ESC-50 metadata meta/esc50.csv" in result.stderr


def test_esc50_corrupt_clip_is_rejected_and_counted(tmp_path):
    source = trees.make_esc50(tmp_path / "download", clips_per_fold_and_class=1)
    (source / "audio" / "2-100200-A-0.wav").write_bytes(b"RIFF not really a wav")
    out = tmp_path / "out"
    rows = prepare("esc50", source, out)
    assert len(rows) == 9 and not any("2-100200-A-0" in r["path"] for r in rows)
    rejects = list(csv.DictReader(open(out / "rejects.csv")))
    assert [r["target"] for r in rejects] == ["audio/2-100200-A-0.flac"]
    assert json.loads((out / "prepare.json").read_text())["rejected"] == 1


def test_help_documents_the_owners_tree():
    text = run_script("finetune/esc50/prepare.sh", "--help").stdout
    assert "meta/esc50.csv" in text and "karolpiczak/ESC-50" in text and "--partial" in text


# -------------------------------------------------------------------------- Speech Commands


@pytest.mark.parametrize("name", ["speechcommands_v2", "speechcommands_v1"])
def test_speechcommands_prepare_official_lists(tmp_path, name):
    source = trees.make_speechcommands(tmp_path / "download")
    out = tmp_path / name
    rows = prepare(name, source, out)
    assert list(rows[0]) == ["path", "label", "split", "group"]
    split = {Path(r["path"]).relative_to(source.resolve()).as_posix(): r["split"] for r in rows}
    valid = (source / "validation_list.txt").read_text().split()
    test = (source / "testing_list.txt").read_text().split()
    assert {k for k, v in split.items() if v == "valid"} == set(valid)
    assert {k for k, v in split.items() if v == "test"} == set(test)
    assert sum(v == "train" for v in split.values()) == 18 - len(valid) - len(test)
    assert not any("_background_noise_" in r["path"] for r in rows)
    assert sorted(p.name for p in (out / "background_noise").iterdir()) == ["doing_the_dishes.flac", "white_noise.flac"]
    assert all(r["group"] == Path(r["path"]).name.split("_nohash_")[0] for r in rows)
    check_prepared(out, rows)


# ------------------------------------------------------------------------------- launchers


def test_fold_manifest_makes_the_fold_the_test_split(tmp_path):
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,fold,group\naudio/a.flac,dog,1,7\naudio/b.flac,cat,2,8\n")
    rows = list(csv.DictReader(open(fold_manifest(manifest, "2", tmp_path / "run" / "m.csv"))))
    assert [(Path(r["path"]), r["split"]) for r in rows] == [
        ((manifest.parent / "audio/a.flac").resolve(), "train"), ((manifest.parent / "audio/b.flac").resolve(), "test")]
    with pytest.raises(ValueError, match="has folds 1, 2"):
        fold_manifest(manifest, "3", tmp_path / "x.csv")


def test_results_table_cross_validation():
    folds = {f"fold-{k}": {"valid": {"accuracy": 0.5, "mAP": 0.6}, "test": {"accuracy": a, "mAP": 0.7}}
             for k, a in ((1, 0.8), (2, 0.9))}
    table = results_table(RECIPES["esc50"], {"folds": folds, "test_mean": {"accuracy": 0.85, "mAP": 0.7},
                                             "test_std": {"accuracy": 0.05, "mAP": 0.0}})
    assert re.search(r"fold-2\s+50\.00\s+90\.00\s+60\.00\s+70\.00", table)
    assert "85.00 +- 5.00" in table


def test_esc50_launcher_two_steps_of_one_fold(tmp_path):
    source = trees.make_esc50(tmp_path / "download", clips_per_fold_and_class=2)
    data = tmp_path / "esc50"
    prepare("esc50", source, data)
    encoder = tiny_export(tmp_path / "encoder")
    # fold 1 is the test split (4 clips); 16 training clips minus 10 % valid -> 14, batch 7: two steps
    result = run_script("shell/finetune_esc50.sh", "--pretrained", encoder, "--data", data, "--exp-dir", tmp_path / "exp",
                        "--fold", "1", "features.num_mel_bins=32", "train.epochs=1", "data.batch_size=7",
                        "data.num_workers=0", "train.log_every=1")
    run = tmp_path / "exp" / "fold-1"
    results = json.loads((run / "results.json").read_text())
    assert results["clips"]["test"] == 4
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps) == 2 and any(r["split"] == "train" for r in steps)
    assert "ESC-50: 5-fold cross-validation" in result.stdout and re.search(r"\nrun\s+\d", result.stdout)


# --------------------------------------------------------------------------- configs, READMEs


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_config_loads_and_validates(name):
    cfg = load_finetune_config(str(RECIPES[name].config), ["model.pretrained=none", "model.preset=ssamba-small",
                                                           "data.manifest=data/x/manifest.csv"])
    assert cfg.data.folds == RECIPES[name].folds
    assert cfg.train.epochs > 0 and cfg.optim.lr > 0


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_readme_names_the_source_of_each_published_number(name):
    text = (ROOT / "finetune" / name / "README.md").read_text()
    section = text.split("## Published numbers", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip().lower() for c in table[0].strip("|").split("|")]
    assert "source" in header, f"{name}: the published-number table needs a source column"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert rows, f"{name}: empty published-number table"
    for row in rows:
        assert row[header.index("source")], f"{name}: a published number without its source: {row}"


# ------------------------------------------------------------------------ the other datasets


def test_audioset_20k_prepare_counts_missing_clips(tmp_path):
    source = trees.make_audioset(tmp_path / "download")
    out = tmp_path / "as20k"
    rows = prepare("audioset_20k", source, out)
    assert len(rows) == 10  # 2 x 6 segments, one video per list not downloaded: counted, not fatal
    report = json.loads((out / "prepare.json").read_text())
    assert any("2 of 12 segments' clips" in w for w in report["warnings"])
    first = next(r for r in rows if r["group"] == "-b00_abcdef")
    assert (first["split"], first["label"]) == ("train", "/m/09x0r;/t/dd00088")
    assert {r["split"] for r in rows} == {"train", "test"}
    check_prepared(out, rows)


def test_audioset_20k_truncated_segment_file_is_an_error(tmp_path):
    source = trees.make_audioset(tmp_path / "download")
    lines = (source / "eval_segments.csv").read_text().splitlines()
    (source / "eval_segments.csv").write_text("\n".join(lines[:-2]) + "\n")
    result = run_script("finetune/audioset_20k/prepare.sh", source, tmp_path / "out", "--partial", check=False)
    assert result.returncode == 1 and "the header declares 6" in result.stderr


def test_voxceleb1_prepare_iden_split(tmp_path):
    source = trees.make_voxceleb1(tmp_path / "download")
    out = tmp_path / "vox1"
    rows = prepare("voxceleb1", source, out)
    lines = (source / "iden_split.txt").read_text().split("\n")
    assert len(rows) == 15 and {r["label"] for r in rows} == {"id10001", "id10002", "id10003"}
    split_of = {"1": "train", "2": "valid", "3": "test"}
    expected = {line.split()[1]: split_of[line.split()[0]] for line in lines if line}
    assert {"/".join(Path(r["path"]).parts[-3:]): r["split"] for r in rows} == expected
    assert all(r["group"] == Path(r["path"]).parts[-2] for r in rows)  # videos stay in one split here
    check_prepared(out, rows)


def test_iemocap_prepare_four_classes_by_session(tmp_path):
    source = trees.make_iemocap(tmp_path / "download")
    out = tmp_path / "iemocap"
    rows = prepare("iemocap", source, out)
    # per dialog: neu, hap, exc->hap, ang, sad kept; fru, xxx dropped
    assert len(rows) == 5 * 2 * 5
    assert (out / "classes.txt").read_text().split() == ["ang", "hap", "neu", "sad"]
    exc = next(r for r in rows if r["path"].endswith("Ses01F_impro01_F002.wav"))
    assert (exc["label"], exc["fold"], exc["group"]) == ("hap", "1", "Ses01F")
    scripted = next(r for r in rows if r["path"].endswith("Ses03M_script02_2_M001.wav"))
    assert (scripted["fold"], scripted["group"]) == ("3", "Ses03M")
    check_prepared(out, rows)


def test_vggsound_prepare_headerless_csv(tmp_path):
    source = trees.make_vggsound(tmp_path / "download")
    out = tmp_path / "vggsound"
    rows = prepare("vggsound", source, out)
    assert len(rows) == 7  # one of 8 videos not downloaded
    assert {r["label"] for r in rows} == {"people marching", "heart sounds, heartbeat"}
    assert [r["split"] for r in rows].count("test") == 2
    check_prepared(out, rows)


def test_epic_sounds_prepare_segments_of_long_files(tmp_path):
    source = trees.make_epic_sounds(tmp_path / "download")
    out = tmp_path / "epic"
    rows = prepare("epic_sounds", source, out)
    assert list(rows[0]) == ["path", "label", "split", "group", "start", "end"]
    assert len(rows) == 12 and {r["path"] for r in rows} == {"audio/P01_11.flac", "audio/P01_12.flac", "audio/P02_03.flac"}
    second = rows[1]
    assert (second["label"], second["start"], second["end"]) == ("ceramic / wood collision", "0.600", "1.000")
    assert {r["split"] for r in rows if r["group"] == "P02_03"} == {"test"}
    assert soundfile.info(str(out / "audio/P01_11.flac")).duration == pytest.approx(3.5, abs=1e-3)
    check_prepared(out, rows)


def test_dcase2025_prepare_split25_and_test(tmp_path):
    source = trees.make_dcase2025(tmp_path / "download")
    out = tmp_path / "dcase"
    rows = prepare("dcase2025_task1", source, out)
    assert len(rows) == 21 and {r["label"] for r in rows} == set(trees.DCASE_SCENES)
    train = [r for r in rows if r["split"] == "train"]
    assert all("vienna" not in r["group"] and not r["path"].endswith("-s4.flac") for r in train)
    assert {Path(r["path"]).stem.rsplit("-", 1)[1] for r in rows if r["split"] == "test"} == {"a", "b", "s4"}
    check_prepared(out, rows)


def test_urban8k_per_second_concatenations(tmp_path):
    source = trees.make_urbansound8k(tmp_path / "download", folds=10)
    out = tmp_path / "urban"
    rows = prepare("urban8k_per_second", source, out)
    assert list(rows[0]) == ["path", "label", "fold", "group", "start", "end"]
    assert {r["fold"] for r in rows} == {str(k) for k in range(1, 11)}
    fold1 = [r for r in rows if r["fold"] == "1"]
    assert {r["path"] for r in fold1} == {"audio/fold1/concat_000.flac"}
    # clips of 0.5, 1.5, 2.0 and 1.2 s occupy 1, 2, 2 and 2 whole seconds, back to back
    spans = sorted((float(r["start"]), float(r["end"])) for r in fold1)
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] == 7
    assert soundfile.info(str(out / "audio/fold1/concat_000.flac")).frames == 7 * 16000
    assert prepare("urban8k_per_second", source, tmp_path / "again") == rows  # the shuffle is seeded
    check_prepared(out, rows)


@pytest.mark.slow
def test_urban8k_per_second_launcher_two_steps_of_one_fold(tmp_path):
    source = trees.make_urbansound8k(tmp_path / "download", folds=10)
    data = tmp_path / "urban"
    prepare("urban8k_per_second", source, data)
    encoder = tiny_export(tmp_path / "encoder")
    # fold 1 is the test split; 9 training recordings minus 10 % valid -> 8, batch 4: two steps
    result = run_script("shell/finetune_urban8k_per_second.sh", "--pretrained", encoder, "--data", data, "--exp-dir",
                        tmp_path / "exp", "--fold", "1", "features.num_mel_bins=32", "features.target_length=800",
                        "train.epochs=1", "data.batch_size=4", "data.num_workers=0")
    results = json.loads((tmp_path / "exp" / "fold-1" / "results.json").read_text())
    assert results["clips"]["test"] == 4 and results["test"]["accuracy"] is not None
    assert "UrbanSound8K 60 s concatenations" in result.stdout


@pytest.mark.slow
def test_dcase2025_launcher_two_steps_and_device_table(tmp_path):
    data = tmp_path / "dcase"
    prepare("dcase2025_task1", trees.make_dcase2025(tmp_path / "download"), data)
    encoder = tiny_export(tmp_path / "encoder", frames=100)
    result = run_script("shell/finetune_dcase2025_task1.sh", "--pretrained", encoder, "--data", data, "--exp-dir",
                        tmp_path / "exp", "features.num_mel_bins=32", "train.epochs=1", "data.batch_size=5",
                        "data.num_workers=0", "schedule.warmup_steps=1")
    assert "macro class accuracy (%) by device" in result.stdout
    assert re.search(r"all\s+a\s+b\s+s4", result.stdout)


LAUNCH_CASES = {  # dataset: (fake tree, batch size giving two training steps, extra overrides)
    "speechcommands_v2": (trees.make_speechcommands, 6, []),
    "speechcommands_v1": (trees.make_speechcommands, 6, []),
    "audioset_20k": (trees.make_audioset, 2, ["features.target_length=128", "train.weight_average=null"]),
    "voxceleb1": (trees.make_voxceleb1, 5, ["features.target_length=128"]),
    "iemocap": (trees.make_iemocap, 18, ["features.target_length=128", "optim.accumulate=1"]),
    "vggsound": (trees.make_vggsound, 2, ["features.target_length=128"]),
    "epic_sounds": (trees.make_epic_sounds, 2, ["features.target_length=128", "schedule.warmup_steps=1"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAUNCH_CASES))
def test_launcher_two_steps(tmp_path, name):
    make, batch, extra = LAUNCH_CASES[name]
    data = tmp_path / name
    prepare(name, make(tmp_path / "download"), data)
    fold = ["--fold", "1"] if RECIPES[name].folds else []
    result = run_script(f"shell/finetune_{name}.sh", "--pretrained", tiny_export(tmp_path / "encoder"), "--data", data,
                        "--exp-dir", tmp_path / "exp", *fold, "features.num_mel_bins=32", "train.epochs=1",
                        f"data.batch_size={batch}", "data.num_workers=0", "train.log_every=1", *extra)
    run = tmp_path / "exp" / ("fold-1" if fold else "")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps) == 2
    assert json.loads((run / "results.json").read_text())["test"]["accuracy"] is not None
    assert RECIPES[name].title in result.stdout
