"""Fine-tuning throughput (clips/s) of ssamba-tiny at ESC-50 settings, next to the pretraining step cost.

One process, ``--threads`` intra-op threads. Times full fine-tuning steps of the trainer's own
pieces (``ssamba.train.finetune``: classifier with a new head, Adam over the per-group learning
rates, ESC-50's SpecAugment 24/96 + noise/roll, cross-entropy, backward, step) after ``--warmup``
untimed steps:

* ``loader``: batches come from ``LabelledAudioDataset`` over generated 5 s FLAC clips (decode,
  resample, fbank, normalise in ``--num-workers`` loader workers), as in ``ssamba finetune``;
* ``synthetic``: one random fbank batch reused every step (the model alone);
* ``pretrain``: a pretraining step of the same encoder for comparison (1024 frames, 16x16 patches
  without overlap = 512 patches, 400 masked, both masked passes, AdamW), synthetic input.

ESC-50 fine-tuning input: 512 frames, 16x16 patches at stride 10 = 12 x 50 = 600 patches + CLS.
Writes OUT_DIR/finetune_throughput.json and prints a markdown table.

examples:
  python benchmarks/finetune_throughput.py                                  # batch 4, 3 timed steps per mode
  python benchmarks/finetune_throughput.py --modes synthetic --steps 2 --batch-size 2
  python benchmarks/finetune_throughput.py --depth 2 --steps 1 --warmup 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINETUNE_CONFIG = REPO / "configs" / "finetune" / "base.yaml"
PRETRAIN_CONFIG = REPO / "configs" / "pretrain" / "base.yaml"
MODES = ("loader", "synthetic", "pretrain")
ESC50_SECONDS = 5.0


def finetune_case(args: argparse.Namespace, mode: str, corpus: Path | None) -> dict[str, object]:
    import torch

    from ssamba.train.engine import DistInfo, TorchEngine, seed_everything
    from ssamba.train.finetune import (
        BatchAugment,
        EpochSampler,
        build_classifier,
        classification_loss,
        make_dataset,
        make_loader,
        make_optimizer,
        read_data,
    )
    from ssamba.train.finetune_config import load_finetune_config

    overrides = [
        "model.pretrained=none", "model.preset=ssamba-tiny", "features.target_length=512", "features.mean=-6.6268077",
        "features.std=5.358466", "augment.freqm=24", "augment.timem=96", "augment.noise=true", "train.loss=ce",
        f"data.batch_size={args.batch_size}", f"data.num_workers={args.num_workers}", "train.device=cpu",
        f"data.manifest={corpus / 'esc.csv' if corpus else 'unused.csv'}",
    ]
    if args.depth is not None:
        overrides.append(f"model.depth={args.depth}")
    cfg = load_finetune_config(FINETUNE_CONFIG, overrides)
    seed_everything(0)
    model = build_classifier(cfg, 50)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    engine = TorchEngine(model, info, optim=cfg.optim, precision="fp32", compile=False, make_optim=lambda m: make_optimizer(cfg, m))
    engine.set_lr(cfg.optim.lr)
    augment = BatchAugment(cfg, seed=0)
    targets = torch.nn.functional.one_hot(torch.arange(args.batch_size) % 50, 50).float()
    if mode == "loader":
        data = read_data(cfg).subset(split="train")
        dataset = make_dataset(cfg, data)
        sampler = EpochSampler(len(dataset), rank=0, world_size=1, seed=0, epoch=0, shuffle=True)
        batches = iter(make_loader(dataset, sampler, args.batch_size, args.num_workers))

        def next_batch():
            batch = next(batches)  # generated clips have 4 classes: pad their targets to ESC-50's 50
            return batch["fbank"], torch.nn.functional.pad(batch["target"], (0, 50 - batch["target"].shape[1]))
    else:
        fixed = torch.randn(args.batch_size, 512, 128)

        def next_batch():
            return fixed, targets
    model.train()
    start = cpu_start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        fbank, target = augment(*next_batch())
        loss = classification_loss(engine.forward(fbank), target, "ce")
        engine.backward(loss)
        engine.step()
    elapsed = time.perf_counter() - start
    clips = args.steps * args.batch_size
    encoder = model.encoder.config
    return {"mode": mode, "clips_per_s": clips / elapsed, "s_per_step": elapsed / args.steps,
            "cpu_s_per_clip": (time.process_time() - cpu_start) / clips, "tokens": encoder.num_patches + 1,
            "frames": encoder.target_length, "stride": encoder.tstride}


def pretrain_case(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from ssamba.models.encoder import AudioMambaEncoder
    from ssamba.models.masked import MaskedPatchModel
    from ssamba.train.config import load_config
    from ssamba.train.engine import DistInfo, TorchEngine, seed_everything

    overrides = ["model.preset=ssamba-tiny", "data.train_shards=unused", "train.eval_every=0", "schedule.name=constant", "train.max_steps=1"]
    if args.depth is not None:
        overrides.append(f"model.depth={args.depth}")
    cfg = load_config(PRETRAIN_CONFIG, overrides)
    seed_everything(0)
    model = MaskedPatchModel(AudioMambaEncoder(cfg.encoder_config()), cfg.objective)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    engine = TorchEngine(model, info, optim=cfg.optim, precision="fp32", compile=False)
    fixed = torch.randn(args.batch_size, 1024, 128)
    start = cpu_start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        out = engine.forward(fixed)
        engine.backward(out.loss)
        engine.step()
    elapsed = time.perf_counter() - start
    clips = args.steps * args.batch_size
    return {"mode": "pretrain", "clips_per_s": clips / elapsed, "s_per_step": elapsed / args.steps,
            "cpu_s_per_clip": (time.process_time() - cpu_start) / clips, "tokens": model.encoder.num_patches + 1,
            "frames": 1024, "stride": 16}


def build_corpus(root: Path, clips: int) -> Path:
    """``clips`` generated 5 s FLAC clips and an ESC-50-like manifest (all train)."""
    import csv

    from ssamba.data.synthetic import write_demo_corpus

    write_demo_corpus(root, clips, seconds=ESC50_SECONDS, seed=0)
    with (root / "manifest.csv").open() as src, (root / "esc.csv").open("w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["path", "label", "split"])
        for row in csv.DictReader(src):
            writer.writerow([row["path"], row["labels"], "train"])
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("examples:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4, help="clips per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--num-workers", type=int, default=1, help="loader workers (loader mode)")
    parser.add_argument("--depth", type=int, default=None, help="override ssamba-tiny's depth (smoke tests)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = None
        if "loader" in args.modes:
            corpus = build_corpus(Path(tmp), args.batch_size * (args.warmup + args.steps))
        for mode in args.modes:
            row = pretrain_case(args) if mode == "pretrain" else finetune_case(args, mode, corpus)
            row.update(batch=args.batch_size, threads=args.threads, steps=args.steps)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "finetune_throughput.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| mode | input | tokens | clips/s | s/step | CPU s/clip |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['frames']} frames, stride {r['stride']} | {r['tokens']} | {r['clips_per_s']:.2f} | "
              f"{r['s_per_step']:.2f} | {r['cpu_s_per_clip']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
