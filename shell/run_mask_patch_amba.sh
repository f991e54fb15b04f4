#!/usr/bin/env bash
# SSAMBA masked-patch pretraining: corpus -> shards -> pretrain -> export, on CPU or GPUs.
# Run with --help for the options. With no arguments: a few-minute CPU demo on generated audio.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./shell/run_mask_patch_amba.sh [options] [-- key=value ...]

Pretrain an SSAMBA encoder with the masked-patch objective, then export the encoder.

With no --shards: generate a small demo corpus of synthetic audio, shard it, pretrain the
ssamba-tiny architecture on the CPU for 4 minutes (configs/pretrain/demo-tiny.yaml: 1.28 s clips
instead of 10.24 s), export the encoder, and print where logs, checkpoints and the export are.

Options (each also settable through the environment variable in brackets):
  --model-size tiny|small|base  encoder size [MODEL_SIZE] (default: tiny)
  --mask-patch 250|300|400      masked patches of 512 per clip [MASK_PATCH] (default: 400)
  --config FILE                 pretraining config [CONFIG] (default: configs/pretrain/ssamba-SIZE-MASK.yaml,
                                or configs/pretrain/demo-tiny.yaml for the demo)
  --lr LR                       peak learning rate [LR] (config default: 1e-4)
  --batch-size N                clips per process and micro-batch [BATCH_SIZE] (config default: 64)
  --epochs N                    passes over the training shards [EPOCHS] (config default: 10)
  --steps N                     optimiser steps (stops at whichever of epochs/steps comes first) [STEPS]
  --minutes M                   wall-time limit of this invocation; rerun to continue [MINUTES]
  --shards DIR                  training shards from `ssamba shards` [SHARDS] (default: demo corpus)
  --eval-shards DIR             held-out shards for evaluation [EVAL_SHARDS]
  --exp-dir DIR                 experiment directory: run/ (checkpoints, logs) and export/ [EXP_DIR]
                                (default: exp/ssamba-SIZE-MASK, or exp/demo)
  --nproc-per-node N            training processes per machine, via torchrun [NPROC_PER_NODE] (default: 1)
  --nnodes N                    machines [NNODES] (default: 1); with --rdzv-endpoint HOST:PORT [RDZV_ENDPOINT]
                                and --node-rank I [NODE_RANK] on each machine
  --engine ddp|deepspeed        training engine [ENGINE] (default: ddp)
  --deepspeed-config FILE       DeepSpeed JSON for --engine deepspeed [DS_CONFIG] (default: configs/deepspeed/zero1.json)
  --demo-clips N                clips in the generated demo training corpus [DEMO_CLIPS] (default: 256)
  --demo-seconds S              length of each demo clip [DEMO_SECONDS] (default: 1.28)
  --no-export                   skip `ssamba export` [EXPORT=0]
  -h, --help                    show this help

Anything after `--` (or any key=value argument) is passed to `ssamba pretrain` as a config override,
e.g. `-- train.precision=bf16 optim.grad_clip=10`. A rerun continues the run in EXP_DIR/run
(--resume auto).

Examples:
  ./shell/run_mask_patch_amba.sh                                  # CPU demo, a few minutes
  ./shell/run_mask_patch_amba.sh --model-size base --mask-patch 400 \
      --shards shards/audioset_librispeech --eval-shards shards/as_eval --nproc-per-node 4
  NPROC_PER_NODE=2 ENGINE=deepspeed ./shell/run_mask_patch_amba.sh --shards shards/train --eval-shards shards/eval
EOF
}

MODEL_SIZE="${MODEL_SIZE:-tiny}"
MASK_PATCH="${MASK_PATCH:-400}"
CONFIG="${CONFIG:-}"
LR="${LR:-}"
BATCH_SIZE="${BATCH_SIZE:-}"
EPOCHS="${EPOCHS:-}"
STEPS="${STEPS:-}"
MINUTES="${MINUTES:-}"
SHARDS="${SHARDS:-}"
EVAL_SHARDS="${EVAL_SHARDS:-}"
EXP_DIR="${EXP_DIR:-}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
RDZV_ENDPOINT="${RDZV_ENDPOINT:-}"
ENGINE="${ENGINE:-ddp}"
DS_CONFIG="${DS_CONFIG:-}"
DEMO_CLIPS="${DEMO_CLIPS:-256}"
DEMO_SECONDS="${DEMO_SECONDS:-1.28}"
EXPORT="${EXPORT:-1}"
OVERRIDES=()

die() { echo "run_mask_patch_amba.sh: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --model-size) need_value "$@"; MODEL_SIZE="$2"; shift 2 ;;
        --mask-patch) need_value "$@"; MASK_PATCH="$2"; shift 2 ;;
        --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
        --lr) need_value "$@"; LR="$2"; shift 2 ;;
        --batch-size) need_value "$@"; BATCH_SIZE="$2"; shift 2 ;;
        --epochs) need_value "$@"; EPOCHS="$2"; shift 2 ;;
        --steps) need_value "$@"; STEPS="$2"; shift 2 ;;
        --minutes) need_value "$@"; MINUTES="$2"; shift 2 ;;
        --shards) need_value "$@"; SHARDS="$2"; shift 2 ;;
        --eval-shards) need_value "$@"; EVAL_SHARDS="$2"; shift 2 ;;
        --exp-dir) need_value "$@"; EXP_DIR="$2"; shift 2 ;;
        --nproc-per-node) need_value "$@"; NPROC_PER_NODE="$2"; shift 2 ;;
        --nnodes) need_value "$@"; NNODES="$2"; shift 2 ;;
        --node-rank) need_value "$@"; NODE_RANK="$2"; shift 2 ;;
        --rdzv-endpoint) need_value "$@"; RDZV_ENDPOINT="$2"; shift 2 ;;
        --engine) need_value "$@"; ENGINE="$2"; shift 2 ;;
        --deepspeed-config) need_value "$@"; DS_CONFIG="$2"; shift 2 ;;
        --demo-clips) need_value "$@"; DEMO_CLIPS="$2"; shift 2 ;;
        --demo-seconds) need_value "$@"; DEMO_SECONDS="$2"; shift 2 ;;
        --no-export) EXPORT=0; shift ;;
        --) shift; OVERRIDES+=("$@"); break ;;
        *=*) OVERRIDES+=("$1"); shift ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$MODEL_SIZE" in tiny|small|base) ;; *) die "--model-size must be tiny, small or base, got '$MODEL_SIZE'" ;; esac
case "$ENGINE" in ddp|deepspeed) ;; *) die "--engine must be ddp or deepspeed, got '$ENGINE'" ;; esac
[[ "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "--nproc-per-node must be a positive integer, got '$NPROC_PER_NODE'"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "--nnodes must be a positive integer, got '$NNODES'"
if [ "$NNODES" -gt 1 ] && [ -z "$RDZV_ENDPOINT" ]; then die "--nnodes $NNODES needs --rdzv-endpoint HOST:PORT"; fi

# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
CONFIGS="$SSAMBA_ROOT/configs"
DS_CONFIG="${DS_CONFIG:-$CONFIGS/deepspeed/zero1.json}"

DEMO=0
if [ -z "$SHARDS" ]; then
    DEMO=1
    [ -z "$EVAL_SHARDS" ] || die "--eval-shards needs --shards"
    EXP_DIR="${EXP_DIR:-exp/demo}"
    CONFIG="${CONFIG:-$CONFIGS/pretrain/demo-tiny.yaml}"
    DATA_DIR="$EXP_DIR/data"
    SHARDS="$DATA_DIR/shards/train"
    EVAL_SHARDS="$DATA_DIR/shards/eval"
    eval_clips=$(( DEMO_CLIPS / 4 > 8 ? DEMO_CLIPS / 4 : 8 ))
    per_shard=$(( DEMO_CLIPS / 8 > 1 ? DEMO_CLIPS / 8 : 1 ))
    if [ ! -f "$SHARDS/index.json" ] || [ ! -f "$EVAL_SHARDS/index.json" ]; then
        echo "== demo corpus: $DEMO_CLIPS training + $eval_clips evaluation clips of ${DEMO_SECONDS} s in $DATA_DIR"
        python - "$DATA_DIR" "$DEMO_CLIPS" "$eval_clips" "$DEMO_SECONDS" <<'PY'
import sys
from ssamba.data.synthetic import write_demo_corpus

out, train, evaluation, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
write_demo_corpus(f"{out}/audio/train", train, seconds=seconds, seed=0)
write_demo_corpus(f"{out}/audio/eval", evaluation, seconds=seconds, seed=1)
PY
        ssamba shards folder "$DATA_DIR/audio/train" -o "$SHARDS" --max-count "$per_shard" --overwrite
        ssamba shards folder "$DATA_DIR/audio/eval" -o "$EVAL_SHARDS" --max-count "$(( eval_clips / 4 > 1 ? eval_clips / 4 : 1 ))" --overwrite
    else
        echo "== demo corpus: reusing $DATA_DIR"
    fi
    echo "== demo config $CONFIG:"
    echo "   a REDUCED demo: the ssamba-tiny architecture on 1.28 s clips (128 frames, 64 patches) instead of"
    echo "   10.24 s (1024 frames, 512 patches), lr 1e-3, 4 minutes, so that the loss falls within minutes on a CPU."
    echo "   The real recipe: --shards DIR --eval-shards DIR (configs/pretrain/ssamba-$MODEL_SIZE-$MASK_PATCH.yaml)."
else
    EXP_DIR="${EXP_DIR:-exp/ssamba-$MODEL_SIZE-$MASK_PATCH}"
    CONFIG="${CONFIG:-$CONFIGS/pretrain/ssamba-$MODEL_SIZE-$MASK_PATCH.yaml}"
    [ -f "$CONFIG" ] || die "no config $CONFIG; available: $(ls "$CONFIGS/pretrain" | tr '\n' ' ')"
fi

RUN_DIR="$EXP_DIR/run"
ARGS=(--config "$CONFIG" "run.dir=$RUN_DIR" "data.train_shards=$SHARDS" "dist.engine=$ENGINE")
if [ -n "$EVAL_SHARDS" ]; then ARGS+=("data.eval_shards=$EVAL_SHARDS"); fi
if [ "$DEMO" = 0 ] || [ "$MODEL_SIZE" != tiny ]; then ARGS+=("model.preset=ssamba-$MODEL_SIZE"); fi
if [ "$DEMO" = 0 ]; then ARGS+=("objective.mask_patch=$MASK_PATCH"); fi
if [ -n "$LR" ]; then ARGS+=("optim.lr=$LR"); fi
if [ -n "$BATCH_SIZE" ]; then ARGS+=("data.batch_size=$BATCH_SIZE"); fi
if [ -n "$EPOCHS" ]; then ARGS+=("train.epochs=$EPOCHS"); fi
if [ -n "$STEPS" ]; then ARGS+=("train.max_steps=$STEPS"); fi
if [ -n "$MINUTES" ]; then ARGS+=("train.max_minutes=$MINUTES"); fi
if [ "$ENGINE" = deepspeed ]; then ARGS+=("dist.deepspeed_config=$DS_CONFIG"); fi
ARGS+=("${OVERRIDES[@]}" --resume auto)

if [ "$NPROC_PER_NODE" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
    if [ "$NNODES" -gt 1 ]; then
        LAUNCH=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT")
    else
        LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC_PER_NODE")
    fi
    echo "== pretraining: ${LAUNCH[*]} -m ssamba pretrain ${ARGS[*]}"
    "${LAUNCH[@]}" -m ssamba pretrain "${ARGS[@]}"
else
    echo "== pretraining: ssamba pretrain ${ARGS[*]}"
    ssamba pretrain "${ARGS[@]}"
fi

if [ "$NODE_RANK" = 0 ] && [ -f "$RUN_DIR/metrics.jsonl" ]; then
    python - "$RUN_DIR/metrics.jsonl" <<'PY'
import sys
from ssamba.train.metrics import read_metrics

train = [r for r in read_metrics(sys.argv[1]) if r["split"] == "train"]
if train:
    first, last = train[0], train[-1]
    print(f"== training loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} (step {last['step']}); "
          f"mse {first['mse']:.4f} -> {last['mse']:.4f}, mpc accuracy {first['acc']:.3f} -> {last['acc']:.3f}")
PY
fi

EXPORT_DIR="$EXP_DIR/export"
exported=0
if [ "$EXPORT" = 1 ] && [ "$NODE_RANK" = 0 ]; then
    if ssamba export --help >/dev/null 2>&1; then
        echo "== exporting the encoder (best checkpoint by evaluation accuracy, else the last)"
        ssamba export "$RUN_DIR" "$EXPORT_DIR" --overwrite
        exported=1
    else
        echo "== skipping the export: this installation has no \`ssamba export\` command" >&2
    fi
fi

echo
echo "done."
echo "checkpoints: $RUN_DIR/checkpoints"
echo "logs:        $RUN_DIR/metrics.jsonl (tensorboard --logdir $RUN_DIR/tb)"
echo "config:      $RUN_DIR/config.yaml"
if [ "$exported" = 1 ]; then
    echo "export:      $EXPORT_DIR (python -c \"import ssamba; ssamba.load_encoder('$EXPORT_DIR')\")"
fi
