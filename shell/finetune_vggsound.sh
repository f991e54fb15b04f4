#!/usr/bin/env bash
# Fine-tune on vggsound with the whole protocol of configs/finetune/vggsound.yaml and print the final table.
#
#   finetune/vggsound/prepare.sh SOURCE_DIR data/vggsound                 # once: manifest.csv + stats.json
#   shell/finetune_vggsound.sh --pretrained PATH [--nproc-per-node N] [--data data/vggsound] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes vggsound "$@"
