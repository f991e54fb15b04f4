#!/usr/bin/env bash
# Fine-tune on urban8k_per_second with the whole protocol of configs/finetune/urban8k_per_second.yaml and print the final table.
#
#   finetune/urban8k_per_second/prepare.sh SOURCE_DIR data/urban8k_per_second                 # once: manifest.csv + stats.json
#   shell/finetune_urban8k_per_second.sh --pretrained PATH [--nproc-per-node N] [--data data/urban8k_per_second] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes urban8k_per_second "$@"
