#!/usr/bin/env bash
# Task B: 0 A.D. Foley (10 classes), first 3 s of each file, 5 folds grouped by file stem.
#   Needs: apt-get/dpkg (0ad-data, 1.3 GB .deb, shared with the corpus in $DATA).
#   Tiny subset: --max-per-class 4
#
# usage: finetune/open_audio_probes/B_foley/prepare.sh [--data DIR] [--out DIR] [--seed N] [--force] [options]
#   --data DIR   data folder with debs/ and raw/ (default: data/open_audio, shared with the corpus)
#   --out DIR    task folder (default: $DATA/probes/B_foley); writes clips/ and manifest.csv
#   other options go to `python -m ssamba.openaudio.probes foley` (see its --help)
# Deterministic: the same --seed gives the same clips. A finished task is skipped unless --force;
# one built by an older recipe (recipe.json) is rebuilt.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
. "$(dirname "$0")/../../../shell/env.sh"
exec python -m ssamba.openaudio.probes foley "$@"
