#!/usr/bin/env bash
# Task C: keyword spotting (28 phrases): train espeak-ng (48 renders per phrase), valid festival
#   (kal, ked, slt), test flite (kal, kal16, awb, rms, slt x 3 duration stretches). Every render is cut
#   alike to its speech (first to last 25 ms frame within 40 dB of its loudest; recipe 2).
#   Needs: espeak-ng, festival (+ festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festlex-cmu
#   festlex-poslex), flite.
#   Tiny subset: --phrases 3 --renders 2
#
# usage: finetune/open_audio_probes/C_keywords/prepare.sh [--data DIR] [--out DIR] [--seed N] [--force] [options]
#   --data DIR   data folder with debs/ and raw/ (default: data/open_audio, shared with the corpus)
#   --out DIR    task folder (default: $DATA/probes/C_keywords); writes clips/ and manifest.csv
#   other options go to `python -m ssamba.openaudio.probes keywords` (see its --help)
# Deterministic: the same --seed gives the same clips. A finished task is skipped unless --force;
# one built by an older recipe (recipe.json) is rebuilt.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
. "$(dirname "$0")/../../../shell/env.sh"
exec python -m ssamba.openaudio.probes keywords "$@"
