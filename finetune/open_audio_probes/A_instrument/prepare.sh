#!/usr/bin/env bash
# Task A: instrument family (11 classes). Notes rendered with fluidsynth: train FluidR3_GM,
#   valid FluidR3 held-out programs (every 4th of each family), test the csound GM bank (sf_GMbank).
#   Needs: fluidsynth; the banks come from apt-get download (fluid-soundfont-gm, csound-soundfont).
#   Tiny subset: --notes 2 --programs-per-family 2
#
# usage: finetune/open_audio_probes/A_instrument/prepare.sh [--data DIR] [--out DIR] [--seed N] [--force] [options]
#   --data DIR   data folder with debs/ and raw/ (default: data/open_audio, shared with the corpus)
#   --out DIR    task folder (default: $DATA/probes/A_instrument); writes clips/ and manifest.csv
#   other options go to `python -m ssamba.openaudio.probes instrument` (see its --help)
# Deterministic: the same --seed gives the same clips. A finished task is skipped unless --force;
# one built by an older recipe (recipe.json) is rebuilt.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
. "$(dirname "$0")/../../../shell/env.sh"
exec python -m ssamba.openaudio.probes instrument "$@"
