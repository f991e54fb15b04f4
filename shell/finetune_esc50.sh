#!/usr/bin/env bash
# Fine-tune on esc50 with the whole protocol of configs/finetune/esc50.yaml and print the final table.
#
#   finetune/esc50/prepare.sh SOURCE_DIR data/esc50                 # once: manifest.csv + stats.json
#   shell/finetune_esc50.sh --pretrained PATH [--nproc-per-node N] [--data data/esc50] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes esc50 "$@"
