"""Benchmark scripts: the SSAST-style baseline's numerics, and both scripts end to end on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_export, write_labelled_clips

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from ssast_baseline import TransformerEncoder, transformer_config

from ssamba.data.labelled import LabelledClip, LabelledSet
from ssamba.models.encoder import AudioMambaEncoder, preset_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT_TIMEOUT_S = 120


def _reference_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention written per head with explicit softmax (float64)."""
    dim = x.shape[-1]
    head_dim = dim // heads
    q, k, v = (x @ qkv_weight.T + qkv_bias).split(dim, dim=-1)
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., part] @ k[..., part].transpose(-2, -1) / head_dim**0.5
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        outputs.append((weights / weights.sum(-1, keepdim=True)) @ v[..., part])
    return torch.cat(outputs, dim=-1) @ proj_weight.T + proj_bias


@pytest.mark.parametrize("attention", ["plain", "sdpa"])
def test_attention_matches_float64_reference(attention):
    torch.manual_seed(0)
    model = TransformerEncoder(transformer_config("tiny", tokens=16, attention=attention, depth=1)).double()
    attn = model.blocks[0].attn
    x = torch.randn(2, 18, 192, dtype=torch.float64)
    expected = _reference_attention(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, heads=3)
    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-10)


def test_plain_and_sdpa_encoders_agree():
    torch.manual_seed(0)
    plain = TransformerEncoder(transformer_config("tiny", tokens=32, attention="plain", depth=2)).double()
    sdpa = TransformerEncoder(transformer_config("tiny", tokens=32, attention="sdpa", depth=2)).double()
    sdpa.load_state_dict(plain.state_dict())
    fbank = torch.randn(2, 64, 128, dtype=torch.float64)
    out = plain(fbank)
    assert out.shape == (2, 2 + 32, 192)  # CLS + distillation token, then 8 x 4 patches
    torch.testing.assert_close(sdpa(fbank), out, rtol=1e-10, atol=1e-10)


def test_baseline_sees_the_same_patch_sequence_as_ssamba():
    torch.manual_seed(0)
    baseline = TransformerEncoder(transformer_config("tiny", tokens=32, depth=1))
    ssamba = AudioMambaEncoder(preset_config("ssamba-tiny", target_length=64, depth=2))
    ssamba.patch_embed.proj.load_state_dict(baseline.patch_embed.state_dict())
    fbank = torch.randn(2, 64, 128)
    torch.testing.assert_close(baseline.patchify(fbank), ssamba.patchify(fbank))


def test_baseline_rejects_wrong_input_shape_and_size():
    model = TransformerEncoder(transformer_config("tiny", tokens=16, depth=1))
    with pytest.raises(ValueError, match=r"expected fbank of shape \(batch, 32, 128\), got \(1, 40, 128\)"):
        model(torch.randn(1, 40, 128))
    with pytest.raises(ValueError, match="unknown transformer size 'huge'"):
        transformer_config("huge", tokens=16)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], check=False, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]


def test_efficiency_script_writes_tables_plot_and_reports_oom(tmp_path):
    # 0.5 GiB per case: SSAMBA and SDPA fit at 4096 tokens, plain attention (two 400 MB matrices) does not.
    _run("efficiency.py", "--sizes", "64", "4096", "--models", "tiny", "--depth", "2", "--repeats", "1", "--mem-limit-gib", "0.5", "--out-dir", str(tmp_path))
    markdown = (tmp_path / "efficiency_cpu.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| tokens |"))
    assert header == "| tokens | ssamba-tiny | ssast-tiny (plain) | ssast-tiny (sdpa) |"
    time_row, memory_row = _table_rows(markdown, "4096")
    assert time_row[2] == memory_row[2] == "OOM (cap 0.5 GiB)"
    assert time_row[1].endswith("s (n=1)") and time_row[3].endswith("s (n=1)")
    assert all(len(row) == 4 and "OOM" not in row[1] for row in _table_rows(markdown, "64"))
    assert "ssamba-tiny vs ssast-tiny (sdpa) | 4096 |" in markdown
    results = json.loads((tmp_path / "efficiency_cpu.json").read_text())["results"]
    statuses = {(r["label"], r["tokens"]): r["status"] for r in results}
    assert statuses == {(label, t): "oom" if (label, t) == ("ssast-tiny (plain)", 4096) else "ok" for label in ("ssamba-tiny", "ssast-tiny (plain)", "ssast-tiny (sdpa)") for t in (64, 4096)}
    ok = [r for r in results if r["status"] == "ok"]
    assert all(r["peak_mib"] > r["extra_mib"] > 0 and r["time_min_s"] <= r["time_median_s"] for r in ok)
    assert (tmp_path / "efficiency_cpu.png").read_bytes()[:8] == PNG_MAGIC


def test_efficiency_script_rejects_token_counts_off_the_patch_grid(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "efficiency.py"), "--sizes", "100"], check=False, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 2
    assert "token counts must be positive multiples of 8" in proc.stderr


def test_throughput_script_writes_a_row_per_backend(tmp_path):
    _run("backend_throughput.py", "--patches", "64", "--depth", "2", "--backends", "chunked", "--procs", "1", "2", "--steps", "1", "--warmup", "0", "--out-dir", str(tmp_path))
    markdown = (tmp_path / "backend_throughput_cpu.md").read_text()
    (row,) = _table_rows(markdown, "`chunked`")
    assert row[1] == "1" and all(cell.endswith(" s)") for cell in row[2:4])
    results = json.loads((tmp_path / "backend_throughput_cpu.json").read_text())["results"]["chunked"]
    for processes in ("1", "2"):
        measured = results[processes]
        assert measured["status"] == "ok" and len(measured["reports"]) == int(processes)
        assert measured["clips_per_s"] == pytest.approx(int(processes) * 2 / max(sum(r["step_s"]) for r in measured["reports"]))


def _needs_fused() -> None:
    from ssamba.models.fused_scan import fused_status

    reason = fused_status()
    if reason is not None:
        pytest.skip(f"fused CPU extension unavailable: {reason}")


def test_fused_scan_script_prints_a_row_per_length_and_thread_count():
    _needs_fused()
    proc = _run("fused_scan.py", "--lengths", "17", "70", "--threads", "1", "--dim", "20", "--repeats", "1", "--reverse", "--isa", "baseline")
    assert "layout=channels-last reverse=True isa=baseline" in proc.stdout
    rows = [_table_rows(proc.stdout, length) for length in ("17", "70")]
    assert all(len(r) == 1 and r[0][1] == "1" and float(r[0][2]) > 0 for r in rows)


def test_fused_scan_script_rejects_an_unknown_isa():
    _needs_fused()
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "fused_scan.py"), "--isa", "sse9"], check=False, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 2 and "--isa sse9: not available here" in proc.stderr


def test_profile_step_compares_two_scan_backends(tmp_path):
    _needs_fused()
    args = ["--target-length", "64", "--mask-patch", "8", "--batch-size", "1", "--threads", "1", "--repeats", "1", "--warmup", "0"]
    proc = _run("profile_step.py", "--scan", "fused", "--compare-scan", "chunked", *args, "--out-dir", str(tmp_path))
    assert "chunked / fused = " in proc.stdout
    (result,) = json.loads((tmp_path / "profile_step_fused-vs-chunked.json").read_text())
    assert result["ratio"] == pytest.approx(result["chunked_step_wall_s"] / result["fused_step_wall_s"])
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "profile_step.py"), "--scan", "fused", "--compare-scan", "fused"], check=False, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 2 and "--compare-scan fused is the --scan backend itself" in proc.stderr


@pytest.mark.parametrize("script", ["efficiency.py", "backend_throughput.py", "fused_scan.py", "profile_step.py", "open_audio_readouts.py"])
def test_scripts_have_help_with_examples(script):
    proc = _run(script, "--help")
    assert "Examples:" in proc.stdout and f"python benchmarks/{script}" in proc.stdout


def test_inference_script_measures_every_model_and_length_in_one_process(tmp_path):
    from ssamba.models.fused_scan import fused_status

    fused_status()  # build the kernels here (no timeout), so that the script finds them cached
    args = ["--seconds", "0.32", "0.5", "--batch", "2", "--models", "tiny", "--depth", "2", "--repeats", "2", "--threads", "1"]
    proc = _run("inference.py", *args, "--memory-tokens", "64", "--out-dir", str(tmp_path))
    assert "round 2/2: ssamba-tiny" in proc.stderr  # progress while measuring
    report = json.loads((tmp_path / "inference_cpu.json").read_text())
    labels = ("ssamba-tiny", "ssast-tiny (plain)", "ssast-tiny (sdpa)")
    speed = {(r["seconds"], r["model"]): r for r in report["speed"]}
    assert set(speed) == {(s, label) for s in (0.32, 0.5) for label in labels}
    for row in speed.values():
        assert row["threads"] == 1 and row["batch"] == 2 and len(row["times_s"]) == 2
        assert row["clips_per_s"] == pytest.approx(2 / row["time_min_s"]) and row["clips_per_s"] > 0
        assert row["extra_mib"] >= 0
    assert speed[(0.5, "ssamba-tiny")]["tokens"] == 24  # 50 frames cut to 48: 8 x 3 patches
    scan = {r["seconds"]: r for r in report["scan"]}
    assert scan[0.5]["state_updates"] == 2 * 2 * 2 * 25 * 384 * 16  # depth x directions x batch x (CLS + 24) x d_inner x N
    assert all(("in_model_rate" in r) == (r["events"] > 0) for r in scan.values())
    assert {(r["tokens"], r["model"]) for r in report["memory"]} == {(64, label) for label in labels}
    markdown = (tmp_path / "inference_cpu.md").read_text()
    assert "| 0.5 s | 1 | ssamba-tiny |" in markdown  # a ratio row per length and thread count
    _run("inference.py", "--from-json", str(tmp_path / "inference_cpu.json"), "--out-dir", str(tmp_path / "again"))
    assert (tmp_path / "again" / "inference_cpu.md").read_text() == markdown
    assert "python benchmarks/inference.py" in _run("inference.py", "--help").stdout
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "inference.py"), "--seconds", "0.1"], check=False, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 2 and "clip lengths must be at least 0.16 s" in proc.stderr


def test_inference_script_sums_the_scan_profiler_ranges():
    from inference import SCAN_EVENT, profiled_scan_seconds

    class TwoScans(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(2):
                with torch.profiler.record_function(SCAN_EVENT):
                    x = torch.cumsum(x, dim=1)
            with torch.profiler.record_function(SCAN_EVENT + "_other"):
                return x[:, :-1]

    seconds, events, length = profiled_scan_seconds(TwoScans(), torch.randn(2, 50, 8))
    assert events == 2 and seconds > 0 and length == 49


def test_inference_report_marks_the_issue_targets(tmp_path):
    from inference import write_report

    def speed(seconds: float, threads: int, model: str, time_s: float) -> dict:
        return {"seconds": seconds, "batch": 4, "tokens": 496, "threads": threads, "model": model, "times_s": [time_s],
                "time_min_s": time_s, "time_median_s": time_s, "clips_per_s": 4 / time_s, "extra_mib": 10.0}

    def memory(tokens: int, model: str, extra_mib: float | None) -> dict:
        row = {"tokens": tokens, "batch": 1, "threads": 2, "size": "tiny", "model": model}
        if extra_mib is None:
            return row | {"status": "skipped", "message": "attention matrices need 9.0 GiB"}
        return row | {"status": "ok", "extra_mib": extra_mib, "time_s": 1.0}

    meta = {"command": "python benchmarks/inference.py", "machine": "test", "threads": [1, 2], "scan_backend": "fused", "depth": "default",
            "date": "today", "load_before": "0", "load_after": "0", "wall_min": 1.0, "repeats": 1}
    report = {
        "meta": meta,
        "speed": [speed(10.0, 2, "ssamba-tiny", 1.4), speed(10.0, 2, "ssast-tiny (plain)", 2.0), speed(10.0, 2, "ssast-tiny (sdpa)", 1.0),
                  speed(1.5, 2, "ssamba-tiny", 2.5), speed(1.5, 2, "ssast-tiny (sdpa)", 1.0),
                  speed(1.5, 1, "ssamba-tiny", 3.0), speed(1.5, 1, "ssast-tiny (sdpa)", 1.0)],
        "memory": [memory(2048, "ssamba-tiny", 90.0), memory(2048, "ssast-tiny (sdpa)", 60.0), memory(2048, "ssast-tiny (plain)", 400.0),
                   memory(4096, "ssamba-tiny", 100.0), memory(4096, "ssast-tiny (sdpa)", 125.0), memory(4096, "ssast-tiny (plain)", None)],
        "scan": [],
    }
    markdown = write_report(report, tmp_path)[1].read_text()
    assert "| 10 s | 2 | ssamba-tiny | 1.40x | 0.70x | <= 1.5x: met |" in markdown
    assert "| 1.5 s | 2 | ssamba-tiny | 2.50x | - | <= 2x: NOT met |" in markdown
    assert "| 1.5 s | 1 | ssamba-tiny | 3.00x | - |  |" in markdown  # the targets are set for 2 threads
    assert "| 2048 | 90 MiB (1.00 s) | 60 MiB (1.00 s) | 400 MiB (1.00 s) | 1.50x |  |" in markdown  # below 4096 tokens: no target
    assert "| 4096 | 100 MiB (1.00 s) | 125 MiB (1.00 s) | skipped (attention matrices need 9.0 GiB) | 0.80x | <= 1x: met |" in markdown
    assert "| 10 s | 4 | 496 | 2 | 2.9 (1.4 / 1.4 s) | 2.0 (2 / 2 s) | 4.0 (1 / 1 s) |" in markdown  # clips/s from the min time


def test_open_audio_readouts_pool_the_clip_columns():
    from open_audio_readouts import pool, readout_vectors

    grid = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3).numpy()  # (freq, time, dim)
    np.testing.assert_allclose(pool(grid, 6, "mean"), grid.mean(axis=(0, 1)))
    np.testing.assert_allclose(pool(grid, 3, "clip-mean"), grid[:, :3].mean(axis=(0, 1)))
    np.testing.assert_allclose(pool(grid, 3, "clip-freq"), grid[:, :3].mean(axis=1).reshape(-1))
    thirds = [grid[:, i : i + 2].mean(axis=(0, 1)) for i in (0, 2, 4)]
    np.testing.assert_allclose(pool(grid, 6, "clip-thirds"), np.concatenate(thirds))
    assert pool(grid, 1, "clip-thirds").shape == (9,)  # one column: each third reads that column
    grids = np.stack([np.stack([grid, 2 * grid])])  # (clips, blocks, freq, time, dim)
    np.testing.assert_allclose(readout_vectors(grids, np.array([6]), "last", "mean")[0], 2 * grid.mean(axis=(0, 1)))
    assert readout_vectors(grids, np.array([6]), "all", "clip-freq").shape == (1, 2 * 2 * 3)


def test_open_audio_readouts_script_probes_both_encoders(tmp_path):
    export = tiny_export(tmp_path)
    task = tmp_path / "probes" / "C_keywords"
    rows = write_labelled_clips(task, per_class=4, seconds=0.4)
    splits = ["train", "train", "valid", "test"]
    lines = ["path,label,split"] + [f"{path},{label},{splits[i // 3]}" for i, (path, label) in enumerate(rows)]
    (task / "manifest.csv").write_text("\n".join(lines) + "\n")
    _run("open_audio_readouts.py", "--export", str(export), "--probes", str(tmp_path / "probes"), "--tasks", "C",
         "--blocks", "last", "--poolings", "mean", "clip-thirds", "--out", str(tmp_path / "readouts"))
    rows = json.loads((tmp_path / "readouts.json").read_text())["rows"]
    assert [(r["encoder"], r["pooling"]) for r in rows] == [("logmel", "-"),
        ("pretrained", "mean"), ("pretrained", "clip-thirds"), ("random", "mean"), ("random", "clip-thirds")]
    assert all(0 <= r["test"] <= 100 and 0 <= r["valid"] <= 100 for r in rows)
    assert "| C | last | clip-thirds |" in (tmp_path / "readouts.md").read_text()


def test_keyword_engines_script_transfers_between_engines(tmp_path):
    # two "engines" render the same three classes; the baseline separates them, so it transfers well
    rows = write_labelled_clips(tmp_path, per_class=6, seconds=0.4)
    lines = ["path,label,split,engine"] + [f"{path},{label},train,{'one' if i < 9 else 'two'}" for i, (path, label) in enumerate(rows)]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    _run("keyword_engines.py", "--manifest", str(manifest), "--train", "one", "--out", str(tmp_path / "engines"))
    result = json.loads((tmp_path / "engines.json").read_text())
    assert result["frames"] == {"one": 38.0, "two": 38.0}  # 0.4 s: 1 + (6400 - 400) // 160 frames of 10 ms
    assert [(r["train"], r["test"]) for r in result["rows"]] == [("one", "two")]
    assert result["rows"][0]["accuracy"] > 80.0
    assert "| one (9 clips) -> two |" in (tmp_path / "engines.md").read_text()
    manifest.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "keyword_engines.py"), "--manifest", str(manifest)],
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False)
    assert proc.returncode != 0 and "expected an 'engine' column" in proc.stderr


def test_open_audio_readouts_standardise_each_split_on_its_own():
    from open_audio_readouts import standardise_per_split

    splits = ["train"] * 3 + ["test"] * 2
    clips = [LabelledClip(Path(f"{i}.wav"), ("a",), split=split) for i, split in enumerate(splits)]
    data = LabelledSet(clips, ["a"], multilabel=False, source=Path("manifest.csv"))
    vectors = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [10.0, -1.0], [30.0, 3.0]])
    out = standardise_per_split(vectors, data)
    scale = np.sqrt(2 / 3)  # population std of 1, 2, 3
    np.testing.assert_allclose(out[:3], [[-1 / scale, 0.0], [0.0, 0.0], [1 / scale, 0.0]])  # a constant column stays 0
    np.testing.assert_allclose(out[3:], [[-1.0, -1.0], [1.0, 1.0]])
    vectors[4] = np.nan  # a skipped clip: its row stays NaN, the rest of its split is standardised without it
    out = standardise_per_split(vectors, data)
    assert np.isnan(out[4]).all() and np.array_equal(out[3], [0.0, 0.0])
