"""Pretraining throughput (clips/s) of an SSAMBA encoder on this machine, 1..N processes, with and
without the data loader in the loop.

Each case runs in fresh processes (``torchrun --standalone`` for more than one) and times full
training steps of the engine (forward with both masked passes, backward, AdamW step; DDP gradient
all-reduce with several processes) after ``--warmup`` untimed steps:

* ``loader``: batches come from the streaming loader over generated FLAC shards (decode, fbank,
  normalise in ``--num-workers`` loader workers per process), as in ``ssamba pretrain``;
* ``synthetic``: one random fbank batch reused every step (the model alone).

clips/s counts clips of all processes per second of wall time; the CPU seconds per clip of the
training processes (loader workers excluded) estimate the cost without other load. Writes OUT_DIR/pretrain_throughput.json
and prints a markdown table.

examples:
  python benchmarks/pretrain_throughput.py                                   # ssamba-tiny, 512 patches, 1 and 2 processes
  python benchmarks/pretrain_throughput.py --procs 1 --modes synthetic --steps 2 --batch-size 2
  python benchmarks/pretrain_throughput.py --depth 2 --target-length 128 --mask-patch 20 --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "pretrain" / "base.yaml"
CLIPS_PER_SHARD = 4
MODES = ("loader", "synthetic")


def worker(args: argparse.Namespace) -> None:
    """One training process: time ``args.steps`` steps after ``args.warmup``; rank 0 prints JSON."""
    import torch

    from ssamba.models.encoder import AudioMambaEncoder
    from ssamba.models.masked import MaskedPatchModel
    from ssamba.train.config import load_config
    from ssamba.train.engine import (
        TorchEngine,
        all_reduce,
        barrier,
        init_distributed,
        seed_everything,
        shutdown_distributed,
    )
    from ssamba.train.pretrain import TrainBatches, make_train_loader

    overrides = [
        f"model.preset=ssamba-{args.size}", f"features.target_length={args.target_length}", f"objective.mask_patch={args.mask_patch}",
        f"objective.eval_mask_patch={args.mask_patch}", f"data.train_shards={args.shards}", f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.num_workers}", "data.shuffle_buffer=16", "train.eval_every=0", "schedule.name=constant", "train.epochs=null",
        f"train.max_steps={args.warmup + args.steps}", f"run.dir={args.shards}/unused-run",
    ]
    if args.depth is not None:
        overrides.append(f"model.depth={args.depth}")
    cfg = load_config(BASE_CONFIG, overrides)
    info = init_distributed("cpu", "auto", cfg.dist.timeout_minutes)
    seed_everything(0)
    model = MaskedPatchModel(AudioMambaEncoder(cfg.encoder_config()), cfg.objective, mask_seed=info.rank)
    engine = TorchEngine(model, info, optim=cfg.optim, precision="fp32", compile=False)
    encoder = cfg.encoder_config()
    if args.mode == "loader":
        batches = TrainBatches(make_train_loader(cfg, info), None)
        next_batch = batches.next
    else:
        fixed = torch.randn(args.batch_size, encoder.target_length, encoder.num_mel_bins)
        next_batch = lambda: fixed
    start = cpu_start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
        out = engine.forward(next_batch())
        engine.backward(out.loss)
        engine.step()
    barrier()
    elapsed = time.perf_counter() - start
    cpu = all_reduce(torch.tensor([time.process_time() - cpu_start], dtype=torch.float64)).item()
    if info.is_main:
        clips = args.steps * args.batch_size * info.world_size
        print(json.dumps({
            "procs": info.world_size, "mode": args.mode, "clips_per_s": clips / elapsed, "s_per_step": elapsed / args.steps,
            "train_cpu_s_per_clip": cpu / clips,
            "batch_per_proc": args.batch_size, "threads_per_proc": torch.get_num_threads(), "patches": encoder.num_patches,
            "depth": encoder.depth, "width": encoder.embed_dim, "mask_patch": cfg.objective.mask_patch,
        }))
    shutdown_distributed()


def build_shards(root: Path, clips: int, seconds: float) -> Path:
    """A generated FLAC corpus, sharded like `ssamba shards` does."""
    from ssamba.data.shards import ShardOptions, write_shards
    from ssamba.data.sources import folder
    from ssamba.data.synthetic import write_demo_corpus

    write_demo_corpus(root / "audio", clips, seconds=seconds, seed=0)
    out = root / "shards"
    write_shards(folder.scan(root / "audio"), out, ShardOptions(max_count=CLIPS_PER_SHARD), log=lambda message: None)
    return out


def run_case(args: argparse.Namespace, procs: int, mode: str, shards: Path) -> dict[str, object]:
    forwarded = [
        "--worker", "--mode", mode, "--shards", str(shards), "--size", args.size, "--target-length", str(args.target_length),
        "--mask-patch", str(args.mask_patch), "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
        "--steps", str(args.steps), "--warmup", str(args.warmup),
    ]
    if args.depth is not None:
        forwarded += ["--depth", str(args.depth)]
    script = str(Path(__file__).resolve())
    if procs == 1:
        command = [sys.executable, script, *forwarded]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", script, *forwarded]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"case procs={procs} mode={mode} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("examples:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--depth", type=int, default=None, help="override the preset's depth (smoke tests)")
    parser.add_argument("--target-length", type=int, default=1024, help="frames per clip (1024 = 512 patches)")
    parser.add_argument("--mask-patch", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4, help="clips per process and step")
    parser.add_argument("--num-workers", type=int, default=1, help="loader workers per process (loader mode)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--shards", type=Path, default=None, help="use these shards instead of generating a corpus")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="synthetic", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None and "loader" in args.modes:
            per_step = args.batch_size * max(args.procs)
            clips = max(CLIPS_PER_SHARD * max(args.procs) * max(args.num_workers, 1) * 2, per_step * 2)
            shards = build_shards(Path(tmp), clips, seconds=args.target_length / 100.0)
        shards = shards or Path(tmp)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        print("| processes | data | clips/s | s/step | training-process CPU s/clip | batch/process | threads/process |")
        print("|---|---|---|---|---|---|---|", flush=True)
        results = []
        for procs in args.procs:
            for mode in args.modes:
                r = run_case(args, procs, mode, shards)
                results.append(r)
                (args.out_dir / "pretrain_throughput.json").write_text(json.dumps(results, indent=1) + "\n")
                print(
                    f"| {r['procs']} | {r['mode']} | {r['clips_per_s']:.3f} | {r['s_per_step']:.2f} | {r['train_cpu_s_per_clip']:.2f} "
                    f"| {r['batch_per_proc']} | {r['threads_per_proc']} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
