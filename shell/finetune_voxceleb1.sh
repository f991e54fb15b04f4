#!/usr/bin/env bash
# Fine-tune on voxceleb1 with the whole protocol of configs/finetune/voxceleb1.yaml and print the final table.
#
#   finetune/voxceleb1/prepare.sh SOURCE_DIR data/voxceleb1                 # once: manifest.csv + stats.json
#   shell/finetune_voxceleb1.sh --pretrained PATH [--nproc-per-node N] [--data data/voxceleb1] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes voxceleb1 "$@"
