#!/usr/bin/env bash
# Fine-tune on dcase2025_task1 with the whole protocol of configs/finetune/dcase2025_task1.yaml and print the final table.
#
#   finetune/dcase2025_task1/prepare.sh SOURCE_DIR data/dcase2025_task1                 # once: manifest.csv + stats.json
#   shell/finetune_dcase2025_task1.sh --pretrained PATH [--nproc-per-node N] [--data data/dcase2025_task1] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes dcase2025_task1 "$@"
