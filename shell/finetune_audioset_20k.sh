#!/usr/bin/env bash
# Fine-tune on audioset_20k with the whole protocol of configs/finetune/audioset_20k.yaml and print the final table.
#
#   finetune/audioset_20k/prepare.sh SOURCE_DIR data/audioset_20k                 # once: manifest.csv + stats.json
#   shell/finetune_audioset_20k.sh --pretrained PATH [--nproc-per-node N] [--data data/audioset_20k] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes audioset_20k "$@"
