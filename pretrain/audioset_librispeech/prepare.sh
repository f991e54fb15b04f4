#!/usr/bin/env bash
# Prepare SSAMBA's pretraining corpus (AudioSet-2M + LibriSpeech 960 h) as WebDataset shards.
#
# usage: pretrain/audioset_librispeech/prepare.sh [--stage N] [--stop-stage N]
#
# Expects (set the variables or edit the defaults below):
#   AUDIOSET_CLIPS    folder of downloaded AudioSet clips (<YTID>_<start>.{wav,flac,m4a,...})
#   AUDIOSET_META     folder with unbalanced_train_segments.csv, balanced_train_segments.csv,
#                     eval_segments.csv and class_labels_indices.csv
#   LIBRISPEECH       LibriSpeech root holding train-clean-100, train-clean-360, train-other-500
#   OUT               output folder (default: data/pretrain)
#   WORKERS           decoding processes (default: all cores)
#
# stages:
#   0  check the inputs exist
#   1  LibriSpeech train (960 h) -> $OUT/librispeech
#   2  AudioSet unbalanced + balanced train -> $OUT/audioset_train
#   3  AudioSet eval -> $OUT/audioset_eval (held-out set for pretraining evaluation)
#   4  dataset statistics of the training mix (mean/std for normalisation)
#
# Every stage is resumable: a rerun skips finished shards. m4a/AAC clips need `pip install "ssamba[decode]"`.
set -euo pipefail
. "$(dirname "$0")/../../shell/env.sh"

stage=0
stop_stage=4
while [ $# -gt 0 ]; do
    case "$1" in
        --stage) stage="$2"; shift 2 ;;
        --stop-stage) stop_stage="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

AUDIOSET_CLIPS="${AUDIOSET_CLIPS:-data/audioset/clips}"
AUDIOSET_META="${AUDIOSET_META:-data/audioset/meta}"
LIBRISPEECH="${LIBRISPEECH:-data/LibriSpeech}"
OUT="${OUT:-data/pretrain}"
WORKERS="${WORKERS:-$(nproc)}"

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if run_stage 0; then
    echo "stage 0: checking inputs"
    missing=0
    for path in "$AUDIOSET_CLIPS" "$LIBRISPEECH/train-clean-100" "$LIBRISPEECH/train-clean-360" "$LIBRISPEECH/train-other-500" \
        "$AUDIOSET_META/unbalanced_train_segments.csv" "$AUDIOSET_META/balanced_train_segments.csv" \
        "$AUDIOSET_META/eval_segments.csv" "$AUDIOSET_META/class_labels_indices.csv"; do
        [ -e "$path" ] || { echo "  missing: $path" >&2; missing=1; }
    done
    [ "$missing" = 0 ] || { echo "set AUDIOSET_CLIPS, AUDIOSET_META and LIBRISPEECH (see --help)" >&2; exit 1; }
fi

if run_stage 1; then
    echo "stage 1: LibriSpeech 960 h -> $OUT/librispeech"
    for part in train-clean-100 train-clean-360 train-other-500; do
        ssamba shards librispeech "$LIBRISPEECH/$part" -o "$OUT/librispeech/$part" --workers "$WORKERS"
    done
fi

if run_stage 2; then
    echo "stage 2: AudioSet train -> $OUT/audioset_train"
    ssamba shards audioset "$AUDIOSET_CLIPS" -o "$OUT/audioset_train" --workers "$WORKERS" \
        --segments "$AUDIOSET_META/unbalanced_train_segments.csv" \
        --segments "$AUDIOSET_META/balanced_train_segments.csv" \
        --labels "$AUDIOSET_META/class_labels_indices.csv"
fi

if run_stage 3; then
    echo "stage 3: AudioSet eval -> $OUT/audioset_eval"
    ssamba shards audioset "$AUDIOSET_CLIPS" -o "$OUT/audioset_eval" --workers "$WORKERS" \
        --segments "$AUDIOSET_META/eval_segments.csv" \
        --labels "$AUDIOSET_META/class_labels_indices.csv"
fi

if run_stage 4; then
    echo "stage 4: normalisation statistics"
    ssamba stats "$OUT/audioset_train" "$OUT"/librispeech/train-* --max-clips 20000 --workers "$WORKERS" -o "$OUT/stats.json"
fi
