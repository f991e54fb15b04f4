#!/usr/bin/env bash
# Fine-tune on epic_sounds with the whole protocol of configs/finetune/epic_sounds.yaml and print the final table.
#
#   finetune/epic_sounds/prepare.sh SOURCE_DIR data/epic_sounds                 # once: manifest.csv + stats.json
#   shell/finetune_epic_sounds.sh --pretrained PATH [--nproc-per-node N] [--data data/epic_sounds] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes epic_sounds "$@"
