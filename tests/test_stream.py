"""Streaming loader: shard expansion, rank/worker splitting, mixing, skip-and-count, resume."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import deadline
from ssamba.audio.augment import AugmentConfig
from ssamba.audio.fbank import FeatureConfig
from ssamba.audio.io import load_audio
from ssamba.data.shards import ShardOptions, write_shards
from ssamba.data.sources import folder
from ssamba.data.stats import compute_stats
from ssamba.data.stream import LoaderConfigError, NoReadableSamplesError, expand_shards, is_damage, iter_tar_samples, make_loader
from ssamba.train.config import load_config
from ssamba.train.pretrain import pretrain
from ssamba.data.synthetic import CLIP_KINDS, write_demo_corpus

FEATURES = FeatureConfig(target_length=64)
QUIET = {"log": lambda message: None}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_shards(root: Path, n_clips: int, seed: int, fbank: bool = False, int_labels: bool = False) -> Path:
    write_demo_corpus(root / "corpus", n_clips=n_clips, seconds=0.5, seed=seed)
    records = folder.scan(root / "corpus", labels_from_dirs=True)
    if int_labels:
        for record in records:
            record.labels = [CLIP_KINDS.index(str(record.labels[0]))]
    write_shards(records, root / "shards", ShardOptions(max_count=4, fbank=fbank), **QUIET)
    return root / "shards"


@pytest.fixture(scope="module")
def shards_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_shards(tmp_path_factory.mktemp("a"), 32, seed=1, int_labels=True)  # 8 shards x 4 clips


@pytest.fixture(scope="module")
def shards_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_shards(tmp_path_factory.mktemp("b"), 16, seed=2)  # 4 shards


def _keys(loader: object) -> list[list[str]]:
    return [batch["keys"] for batch in loader]


def test_expand_shards_patterns(shards_a: Path) -> None:
    tars = sorted(str(p) for p in shards_a.glob("*.tar"))
    assert expand_shards(shards_a) == tars  # folder -> index.json
    assert expand_shards(shards_a / "index.json") == tars
    assert expand_shards(str(shards_a / "shard-{000001..000003}.tar")) == tars[1:4]
    assert expand_shards(str(shards_a / "shard-00000[0-1].tar")) == tars[:2]
    assert expand_shards([tars[0], str(shards_a / "shard-00000{2,3}.tar")]) == [tars[0], tars[2], tars[3]]
    with pytest.raises(FileNotFoundError, match="no shards found for"):
        expand_shards(str(shards_a / "nope-{0..3}.tar"))


def test_two_ranks_two_workers_see_disjoint_samples_and_finish(shards_a: Path) -> None:
    seen = []
    for rank in (0, 1):
        loader = make_loader(shards_a, FEATURES, batch_size=2, num_workers=2, seed=5, epoch_length=8, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == 8 and all(b["fbank"].shape == (2, 64, 128) for b in batches)
        keys = [key for batch in batches for key in batch["keys"]]
        assert len(keys) == len(set(keys)) == 16
        seen.append(set(keys))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 32


def test_uneven_shards_still_give_every_rank_the_same_length(shards_a: Path) -> None:
    seven = expand_shards(shards_a)[:7]  # slots own 2, 2, 2 and 1 shards
    seen = []
    for rank in (0, 1):
        loader = make_loader(seven, FEATURES, batch_size=2, num_workers=2, seed=0, epoch_length=9, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == 9 and loader.epoch == 1
        seen.append({key for batch in batches for key in batch["keys"]})
    assert not seen[0] & seen[1]


def test_resampled_stream_is_seeded_and_reshuffles_per_epoch(shards_a: Path) -> None:
    def run(seed: int, epoch: int) -> list[list[str]]:
        loader = make_loader(shards_a, FEATURES, batch_size=3, seed=seed, epoch_length=4, resampled=True, rank=1, world_size=3)
        loader.set_epoch(epoch)
        return _keys(loader)

    first = run(7, 0)
    assert len(first) == 4 and first == run(7, 0)
    assert first != run(7, 1) and first != run(8, 0)


def test_resume_from_state_dict(shards_a: Path) -> None:
    loader = make_loader(shards_a, FEATURES, batch_size=2, seed=3, epoch_length=6)
    for index, _ in enumerate(loader):
        if index == 1:
            break
    state = loader.state_dict()
    assert state == {"seed": 3, "epoch": 0, "batches_in_epoch": 2, "skipped_total": 0}

    def resumed() -> tuple[list[list[str]], int]:
        fresh = make_loader(shards_a, FEATURES, batch_size=2, seed=3, epoch_length=6)
        fresh.load_state_dict(state)
        return _keys(fresh), fresh.epoch

    keys, epoch = resumed()
    assert len(keys) == 4 and epoch == 1
    assert resumed()[0] == keys
    with pytest.raises(ValueError, match="loader state has seed 3, this loader uses seed 4"):
        make_loader(shards_a, FEATURES, seed=4).load_state_dict(state)


def test_full_passes_advance_the_epoch_and_reshuffle(shards_a: Path) -> None:
    loader = make_loader(shards_a, FEATURES, batch_size=8, seed=0, shuffle_buffer=16)
    epoch0, epoch1 = _keys(loader), _keys(loader)
    assert loader.epoch == 2 and len(epoch0) == len(epoch1) == 4
    assert sorted(sum(epoch0, [])) == sorted(sum(epoch1, [])) and epoch0 != epoch1


def test_mixing_weights_hold(shards_a: Path, shards_b: Path) -> None:
    loader = make_loader(
        {str(shards_a): 0.7, str(shards_b): 0.3}, FEATURES, batch_size=25, seed=11, epoch_length=16, resampled=True,
        num_workers=2,
    )
    counts = Counter(source for batch in loader for source in batch["sources"])
    assert sum(counts.values()) == 400
    # binomial(400, 0.7): sd = 9.2 samples; allow 4 sd
    assert abs(counts[str(shards_a)] - 280) <= 37


def _tar_with(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_and_shards_are_skipped_and_counted(shards_a: Path, tmp_path: Path) -> None:
    good = list(iter_tar_samples(expand_shards(shards_a)[0]))[:2]
    members = [
        (f"{good[0]['__key__']}.flac", good[0]["flac"]), (f"{good[0]['__key__']}.json", good[0]["json"]),
        ("badaudio.flac", b"not a flac file"), ("badaudio.json", b'{"labels": []}'),
        ("badjson.flac", good[1]["flac"]), ("badjson.json", b"{oops"),
        (f"{good[1]['__key__']}.flac", good[1]["flac"]), (f"{good[1]['__key__']}.json", good[1]["json"]),
    ]
    _tar_with(tmp_path / "mixed.tar", members)
    whole = Path(expand_shards(shards_a)[1]).read_bytes()
    (tmp_path / "truncated.tar").write_bytes(whole[: len(whole) // 2])
    for workers in (0, 2):
        loader = make_loader([str(tmp_path / "mixed.tar"), str(tmp_path / "truncated.tar")], FEATURES, batch_size=1, num_workers=workers)
        keys = {key for batch in loader for key in batch["keys"]}
        assert {good[0]["__key__"], good[1]["__key__"]} <= keys and not keys & {"badaudio", "badjson"}
        assert loader.skipped == 3  # bad audio, bad json, truncated shard
        assert loader.state_dict()["skipped_total"] == 3


def test_precomputed_fbank_shards_give_the_same_batches(tmp_path: Path) -> None:
    audio = _make_shards(tmp_path / "audio", 4, seed=9)
    fbank = _make_shards(tmp_path / "fbank", 4, seed=9, fbank=True)
    config = replace(FEATURES, target_length=40)
    from_audio = next(iter(make_loader(audio, config, batch_size=4, shuffle_buffer=0)))
    from_fbank = next(iter(make_loader(fbank, config, batch_size=4, shuffle_buffer=0)))
    assert from_audio["keys"] == from_fbank["keys"]
    assert (from_audio["fbank"] - from_fbank["fbank"]).abs().max() < 0.01
    with pytest.raises(LoaderConfigError, match="precomputed fbank options"):
        list(make_loader(fbank, replace(config, num_mel_bins=64), batch_size=4))


def test_batches_match_feature_config_on_the_original_files(shards_a: Path) -> None:
    batch = next(iter(make_loader(shards_a, FEATURES, batch_size=4, shuffle_buffer=0, num_classes=4)))
    paths = {record.key: Path(record.path) for record in folder.scan(shards_a.parent / "corpus")}
    for key, features, labels in zip(batch["keys"], batch["fbank"], batch["labels"]):
        expected = FEATURES.features(load_audio(paths[key]))
        assert (features - expected).abs().max() < 1e-4
        assert labels.tolist() == [float(i == CLIP_KINDS.index(paths[key].parent.name)) for i in range(4)]


def test_finetuning_augmentations_in_the_loader(shards_a: Path) -> None:
    for level in ("waveform", "fbank"):
        augment = AugmentConfig(freq_mask=24, time_mask=20, mixup=1.0, mixup_level=level, noise=True)
        loader = make_loader(shards_a, FEATURES, batch_size=8, seed=2, augment=augment, num_classes=4)
        labels = torch.cat([batch["labels"] for batch in loader])
        assert labels.shape == (32, 4)
        assert torch.allclose(labels.sum(1), torch.ones(32))
        assert ((labels > 0) & (labels < 1)).any(dim=1).float().mean() > 0.5


def test_configuration_errors_are_fatal_and_clear(shards_a: Path) -> None:
    with pytest.raises(LoaderConfigError, match=r"label [23] is not a class index < num_classes=2"):
        list(make_loader(shards_a, FEATURES, batch_size=2, num_classes=2))
    two = expand_shards(shards_a)[:2]
    with pytest.raises(LoaderConfigError, match="has 2 shards, fewer than world_size x workers = 4"):
        list(make_loader(two, FEATURES, batch_size=2, epoch_length=2, rank=3, world_size=4))
    with pytest.raises(ValueError, match="epoch_length .* is required"):
        make_loader(shards_a, FEATURES, rank=0, world_size=2)
    with pytest.raises(ValueError, match="mixup mixes label vectors: pass num_classes"):
        make_loader(shards_a, FEATURES, augment=AugmentConfig(mixup=0.5))
    with pytest.raises(ValueError, match="mixing weight of 'x' must be a positive number"):
        make_loader({"x": 0})


def _ddp_worker(rank: int, shard_list: list[str], port: int, result_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    loader = make_loader(shard_list, FEATURES, batch_size=2, num_workers=2, seed=0, epoch_length=5)
    steps = 0
    for batch in loader:
        total = batch["fbank"].sum().reshape(1)
        torch.distributed.all_reduce(total)  # would hang if one rank ran out of batches first
        steps += 1
    torch.distributed.barrier()
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"steps": steps, "epoch": loader.epoch}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_on_uneven_shards_never_hang(shards_a: Path, tmp_path: Path) -> None:
    port = 29500 + os.getpid() % 1000
    shard_list = expand_shards(shards_a)[:5]  # 5 shards over 2 ranks x 2 workers: uneven
    torch.multiprocessing.spawn(_ddp_worker, args=(shard_list, port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"steps": 5, "epoch": 1}] * 2


# --- shards that give nothing, and damaged shards ---

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = [
    "model.preset=ssamba-tiny", "model.embed_dim=32", "model.depth=2", "features.target_length=64", "objective.mask_patch=8",
    "objective.eval_mask_patch=8", "data.batch_size=2", "data.num_workers=0", "train.eval_every=0", "schedule.name=constant",
]


def _unreadable_shards(folder_path: Path) -> Path:
    folder_path.mkdir()
    (folder_path / "zero-bytes.tar").write_bytes(b"")
    _tar_with(folder_path / "empty.tar", [])
    (folder_path / "not-a-tar.tar").write_bytes(b"<html>404</html>" * 64)
    return folder_path


def _undecodable_shards(folder_path: Path) -> Path:
    folder_path.mkdir()
    _tar_with(folder_path / "bad.tar", [(f"clip{i}.{ext}", b"not audio" if ext == "flac" else b"{}") for i in range(4) for ext in ("flac", "json")])
    return folder_path


@pytest.mark.parametrize("epochs", ["null", "1"])
def test_training_on_shards_without_samples_fails_clearly(tmp_path: Path, epochs: str, caplog: pytest.LogCaptureFixture) -> None:
    """No index.json, so no epoch length: before, epochs=null spun forever and epochs=1 'finished' at step 0."""
    unreadable, undecodable = _unreadable_shards(tmp_path / "unreadable"), _undecodable_shards(tmp_path / "undecodable")
    base = [*TINY_PRETRAIN, f"train.epochs={epochs}", "train.max_steps=5"]
    with deadline(120), pytest.raises(NoReadableSamplesError, match=r"none of its 3 shards can be read .*zero-bytes.tar: not a readable tar \(empty file\)"):
        pretrain(load_config(REPO / "configs/pretrain/base.yaml", [*base, f"data.train_shards={unreadable}", f"run.dir={tmp_path / 'a'}"]), progress=False)
    with deadline(120), pytest.raises(NoReadableSamplesError, match=r"a whole pass over the shards of 'data' gave no batch of 2 \(4 samples skipped"):
        pretrain(load_config(REPO / "configs/pretrain/base.yaml", [*base, f"data.train_shards={undecodable}", f"run.dir={tmp_path / 'b'}"]), progress=False)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 6  # no warning flood


def test_some_unreadable_shards_are_skipped_with_one_warning(shards_a: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _unreadable_shards(tmp_path / "bad")
    with caplog.at_level(logging.WARNING):
        loader = make_loader([*expand_shards(shards_a)[:2], *expand_shards(bad)], FEATURES, batch_size=4)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["3 of the 5 shards of source 'data' cannot be read and will be skipped"]
    assert sum(len(batch["keys"]) for batch in loader) == 8 and loader.skipped == 2  # 0-byte and non-tar (the empty tar loses nothing)


def _corrupt_member_header(shard: Path, member_index: int, out: Path) -> str:
    """Copy ``shard`` to ``out`` with the header of member ``member_index`` overwritten (bad checksum)."""
    with tarfile.open(shard) as tar:
        member = tar.getmembers()[member_index]
    data = bytearray(shard.read_bytes())
    data[member.offset + 100 : member.offset + 108] = b"garbage!"  # the mode field: checksum no longer matches
    out.write_bytes(bytes(data))
    return member.name


@pytest.mark.parametrize("member_index", [2, 3, 7])  # a clip's flac header, a json header, the shard's last header
def test_a_damaged_member_header_costs_one_counted_sample(tmp_path: Path, member_index: int) -> None:
    shards = _make_shards(tmp_path / "c", 8, seed=4)  # 2 shards x 4 clips, index.json lists the counts
    shard = shards / "shard-000000.tar"
    lost = _corrupt_member_header(shard, member_index, shard.with_suffix(".bad"))
    shard.with_suffix(".bad").replace(shard)  # same name: the index still lists 4 clips for it
    samples = list(iter_tar_samples(str(shard)))
    assert sum(not is_damage(s) for s in samples) == 3 and sum(s["__lost__"] for s in samples if is_damage(s)) == 1
    assert lost.split(".")[0] not in {s["__key__"] for s in samples if not is_damage(s)}
    loader = make_loader(shards, FEATURES, batch_size=1)
    assert sum(len(batch["keys"]) for batch in loader) == 7 and loader.skipped == 1
    stats = compute_stats(shards, FEATURES)
    assert (stats["clips"], stats["skipped"]) == (7, 1)
    # without an index the damage is found from the tar structure alone
    (shards / "index.json").unlink()
    assert sum(not is_damage(s) for s in iter_tar_samples(str(shard))) == 3
    assert sum(s["__lost__"] for s in iter_tar_samples(str(shard)) if is_damage(s)) == 1


def test_samples_lost_to_damage_reach_the_training_metrics(tmp_path: Path) -> None:
    shards = _make_shards(tmp_path / "c", 8, seed=4)
    shard = shards / "shard-000001.tar"
    _corrupt_member_header(shard, 4, shard.with_suffix(".bad"))
    shard.with_suffix(".bad").replace(shard)
    overrides = [*TINY_PRETRAIN, f"data.train_shards={shards}", f"run.dir={tmp_path / 'run'}", "train.max_steps=2", "train.log_every=1"]
    pretrain(load_config(REPO / "configs/pretrain/base.yaml", overrides), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["data_skipped"] for r in records if r.get("split") == "train"]
    assert len(skipped) == 2 and skipped[-1] == 1  # counted once the damaged shard has been read


def test_shortfall_against_the_index_is_counted(tmp_path: Path) -> None:
    shards = _make_shards(tmp_path / "c", 8, seed=4)
    index = json.loads((shards / "index.json").read_text())
    index["shards"][0]["count"] = 6  # e.g. a shard cut at a member boundary and closed again
    (shards / "index.json").write_text(json.dumps(index))
    samples = list(iter_tar_samples(str(shards / "shard-000000.tar")))
    assert [s["__damage__"].split(": ", 1)[1] for s in samples if is_damage(s)] == ["read 4 of the 6 samples its index.json lists; 2 lost"]
    loader = make_loader(shards, FEATURES, batch_size=1)
    assert sum(len(batch["keys"]) for batch in loader) == 8 and loader.skipped == 2
