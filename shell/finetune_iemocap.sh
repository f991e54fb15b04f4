#!/usr/bin/env bash
# Fine-tune on iemocap with the whole protocol of configs/finetune/iemocap.yaml and print the final table.
#
#   finetune/iemocap/prepare.sh SOURCE_DIR data/iemocap                 # once: manifest.csv + stats.json
#   shell/finetune_iemocap.sh --pretrained PATH [--nproc-per-node N] [--data data/iemocap] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes iemocap "$@"
