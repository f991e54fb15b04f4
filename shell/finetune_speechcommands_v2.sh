#!/usr/bin/env bash
# Fine-tune on speechcommands_v2 with the whole protocol of configs/finetune/speechcommands_v2.yaml and print the final table.
#
#   finetune/speechcommands_v2/prepare.sh SOURCE_DIR data/speechcommands_v2                 # once: manifest.csv + stats.json
#   shell/finetune_speechcommands_v2.sh --pretrained PATH [--nproc-per-node N] [--data data/speechcommands_v2] [key=value ...]
#
# --help lists every option; a rerun continues the run (--resume auto).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m ssamba.recipes speechcommands_v2 "$@"
