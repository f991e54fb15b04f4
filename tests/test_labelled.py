"""The labelled-data format: CSV manifests, SSAST JSON lists, labelled shards, validation, decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import write_labelled_clips

from ssamba.audio.fbank import FeatureConfig
from ssamba.audio.io import load_audio
from ssamba.data.labelled import LabelledAudioDataset, collate_labelled, read_labelled


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _tone(path: Path, seconds: float, amplitude: float = 0.5, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype="PCM_16")


def test_csv_manifest_columns_and_relative_paths(tmp_path: Path) -> None:
    manifest = _write(
        tmp_path / "meta" / "m.csv",
        "path,label,split,group,start,end,comment\n"
        "../a.wav,dog,train,s1,,,x\n"
        "sub/b.wav,cat;dog,valid,s2,1.5,2.5,\n"
        "/abs/c.wav,cat,test,s3,0,1,\n",
    )
    data = read_labelled(manifest)
    assert data.classes == ["cat", "dog"] and data.multilabel
    assert [c.path for c in data.clips] == [tmp_path / "a.wav", tmp_path / "meta" / "sub" / "b.wav", Path("/abs/c.wav")]
    assert [c.labels for c in data.clips] == [("dog",), ("cat", "dog"), ("cat",)]
    assert [(c.split, c.group, c.start, c.end, c.row) for c in data.clips] == [
        ("train", "s1", None, None, 1), ("valid", "s2", 1.5, 2.5, 2), ("test", "s3", 0.0, 1.0, 3)
    ]
    np.testing.assert_array_equal(data.targets(), [[0, 1], [1, 1], [1, 0]])
    assert data.splits == ["train", "valid", "test"]
    assert [c.row for c in data.subset(split="valid").clips] == [2]
    with pytest.raises(ValueError, match="single-label"):
        data.label_indices()
    single = read_labelled(_write(tmp_path / "s.csv", "path,label,fold\na.wav,b,1\nb.wav,a,10\nc.wav,b,2\n"))
    assert not single.multilabel and single.label_indices().tolist() == [1, 0, 1]
    assert single.fold_ids() == ["1", "2", "10"]
    assert [c.row for c in single.subset(exclude_folds=["1"]).clips] == [2, 3]
    # A fixed class list (e.g. a checkpoint's) keeps its order.
    assert read_labelled(tmp_path / "s.csv", classes=["b", "a", "z"]).label_indices().tolist() == [0, 1, 0]


def test_legacy_labels_column_is_still_read(tmp_path: Path) -> None:
    data = read_labelled(_write(tmp_path / "old.csv", 'path,labels\na.wav,"x,y"\nb.wav,y\n'))
    assert [c.labels for c in data.clips] == [("x", "y"), ("y",)] and data.multilabel


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\na.wav,dog\nb.wav,emu\n", r"m.csv row 2: label 'emu' is not in the class list \(cat, dog\)"),
        ("path,label,split\na.wav,dog,train\nb.wav,cat,training\n", r"m.csv row 2: split 'training' is not one of train, valid, test"),
        ("path,label,split\na.wav,dog,train\nb.wav,cat,\n", r"m.csv row 2: missing split"),
        (
            "path,label,split,group\na.wav,dog,train,g1\nb.wav,cat,test,g2\nc.wav,cat,test,g1\n",
            r"m.csv row 3: group 'g1' is in split 'test' and in split 'train' \(row 1\)",
        ),
        ("path,label,fold,group\na.wav,dog,1,g1\nb.wav,cat,2,g1\n", r"m.csv row 2: group 'g1' is in fold '2' and in fold '1'"),
        ("path,label\na.wav,dog\nb.wav,\n", r"m.csv row 2: no label"),
        ("path,label\na.wav,dog\n,cat\n", r"m.csv row 2: empty path"),
        ("path,label,start,end\na.wav,dog,2,1\n", r"m.csv row 1: segment end 1 s is not after start 2 s"),
        ("path,label,start,end\na.wav,dog,x,1\n", r"m.csv row 1: start 'x' is not a number"),
        ("path,label\na.wav,dog\na.wav,cat\n", r"m.csv row 2: the same clip as row 1"),
        ("file,label\na.wav,dog\n", r"m.csv: the header must have a 'path' column"),
        ("path,class\na.wav,dog\n", r"m.csv: the header must have a 'label' column"),
        ("path,label,start\na.wav,dog,1\n", r"m.csv: segments need both 'start' and 'end'"),
    ],
)
def test_validation_errors_name_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "m.csv", text)
    with pytest.raises(ValueError, match=message):
        read_labelled(path, classes=["cat", "dog"] if "emu" in text else None)


def test_empty_fold_is_an_error(tmp_path: Path) -> None:
    data = read_labelled(_write(tmp_path / "m.csv", "path,label,fold\na.wav,x,1\nb.wav,y,2\n"))
    data.check_folds(["1", "2"])
    with pytest.raises(ValueError, match=r"m.csv: fold '3' is empty \(folds present: 1, 2\)"):
        data.check_folds(["1", "2", "3"])


def test_ssast_json_list_with_class_table(tmp_path: Path) -> None:
    _write(tmp_path / "class_labels_indices.csv", 'index,mid,display_name\n0,/m/a,"Dog"\n1,/m/b,"Cat, domestic"\n2,/m/c,Emu\n')
    datafile = _write(tmp_path / "lists" / "train.json", json.dumps({"data": [
        {"wav": "../audio/x1.wav", "labels": "/m/b"},
        {"wav": "/data/x2.wav", "labels": "/m/a,/m/c"},
    ]}))
    data = read_labelled(datafile, class_table=tmp_path / "class_labels_indices.csv", split="train")
    assert data.classes == ["/m/a", "/m/b", "/m/c"] and data.display_names == ["Dog", "Cat, domestic", "Emu"]
    assert [(c.path, c.labels, c.split) for c in data.clips] == [
        (tmp_path / "audio" / "x1.wav", ("/m/b",), "train"), (Path("/data/x2.wav"), ("/m/a", "/m/c"), "train")
    ]
    np.testing.assert_array_equal(data.targets(), [[0, 1, 0], [1, 0, 1]])
    _write(tmp_path / "bad.json", json.dumps({"data": [{"wav": "a.wav", "labels": "/m/z"}]}))
    with pytest.raises(ValueError, match=r"bad.json row 1: label '/m/z' is not in the class list"):
        read_labelled(tmp_path / "bad.json", class_table=tmp_path / "class_labels_indices.csv")
    _write(tmp_path / "broken.json", json.dumps({"data": [{"labels": "/m/a"}]}))
    with pytest.raises(ValueError, match=r'broken.json: entry 0 has no "wav" path'):
        read_labelled(tmp_path / "broken.json")


def test_dataset_decodes_segments_and_skips_bad_clips(tmp_path: Path) -> None:
    _tone(tmp_path / "long.wav", 3.0)
    _tone(tmp_path / "quiet.wav", 1.0, amplitude=0.0)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + bytes(200))
    manifest = _write(
        tmp_path / "m.csv",
        "path,label,start,end\nlong.wav,a,1.0,2.0\nquiet.wav,b,,\ncorrupt.wav,a,,\nmissing.wav,b,,\nlong.wav,b,,\n",
    )
    features = FeatureConfig(target_length=120, num_mel_bins=32)
    dataset = LabelledAudioDataset(read_labelled(manifest), features)
    items = [dataset[i] for i in range(len(dataset))]
    assert [item is None for item in items] == [False, True, True, True, False]
    assert dataset.skipped == 3
    segment = load_audio(tmp_path / "long.wav")[16000:32000]
    torch.testing.assert_close(items[0]["fbank"], features.features(segment), rtol=0, atol=0)
    assert items[0]["target"].tolist() == [1.0, 0.0] and items[4]["target"].tolist() == [0.0, 1.0]
    batch = collate_labelled(items)
    assert batch["fbank"].shape == (2, 120, 32) and batch["index"].tolist() == [0, 4] and batch["skipped"] == 3
    assert collate_labelled([None, None]) is None


def test_per_second_targets_from_segments(tmp_path: Path) -> None:
    _tone(tmp_path / "scene.wav", 4.0)
    manifest = _write(tmp_path / "m.csv", "path,label,start,end\nscene.wav,a,0,2\nscene.wav,b,1.5,3\n")
    features = FeatureConfig(target_length=400, num_mel_bins=32)
    dataset = LabelledAudioDataset(read_labelled(manifest), features, seconds_per_label=1.0)
    assert len(dataset) == 1 and dataset.num_seconds == 4
    item = dataset[0]
    # second centres 0.5, 1.5, 2.5, 3.5: a covers [0, 2), b covers [1.5, 3)
    assert item["target"].tolist() == [[1, 0], [1, 1], [0, 1], [0, 0]]
    assert item["target_mask"].tolist() == [True, True, True, False]


def test_generated_set_reads(tmp_path: Path) -> None:
    rows = write_labelled_clips(tmp_path, per_class=2, seconds=0.5)
    _write(tmp_path / "m.csv", "path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    data = read_labelled(tmp_path / "m.csv")
    assert data.classes == ["chirp", "noise", "tone"] and len(data) == 6
    dataset = LabelledAudioDataset(data, FeatureConfig(target_length=50, num_mel_bins=32))
    assert all(dataset[i] is not None for i in range(6))


def test_labelled_shards_round_trip(tmp_path: Path) -> None:
    from ssamba.cli import main as cli

    _tone(tmp_path / "audio" / "long.wav", 3.0)
    _tone(tmp_path / "audio" / "short.wav", 1.0, amplitude=0.3)
    manifest = _write(
        tmp_path / "m.csv",
        "path,label,split,group,start,end\n"
        "audio/long.wav,dog,train,g1,0.5,1.5\naudio/long.wav,cat;dog,train,g1,2,\naudio/short.wav,cat,test,g2,,\n",
    )
    assert cli(["shards", "manifest", str(manifest), "-o", str(tmp_path / "shards"), "--workers", "1"]) == 0
    original = read_labelled(manifest)
    shards = read_labelled(tmp_path / "shards")
    assert shards.classes == original.classes == ["cat", "dog"]
    assert [(c.labels, c.split, c.group, c.key) for c in shards.clips] == [
        (("dog",), "train", "g1", "long_0_5-1_5"), (("cat", "dog"), "train", "g1", "long_2-end"), (("cat",), "test", "g2", "short")
    ]
    features = FeatureConfig(target_length=100, num_mel_bins=32)
    from_files = LabelledAudioDataset(original, features)
    from_shards = LabelledAudioDataset(shards, features)
    for i in range(3):  # 16-bit source -> 16-bit FLAC: the decoded segments are identical
        torch.testing.assert_close(from_shards[i]["fbank"], from_files[i]["fbank"], rtol=0, atol=0)
        assert torch.equal(from_shards[i]["target"], from_files[i]["target"])
