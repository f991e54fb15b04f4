#!/usr/bin/env bash
# Fine-tune on speechcommands_v1 with the whole protocol of configs/finetune/speechcommands_v1.yaml and print the final table.
#
#   finetune/speechcommands_v1/prepare.sh SOURCE_DIR data/speechcommands_v1                 # once: manifest.csv + stats.json
#   shell/finetune_speechcommands_v1.sh --pretrained PATH [--nproc-per-node N] [--data data/speechcommands_v1] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes speechcommands_v1 "$@"
