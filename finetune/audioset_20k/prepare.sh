#!/usr/bin/env bash
# audioset_20k -> 16 kHz audio + manifest.csv + stats.json. Usage: finetune/audioset_20k/prepare.sh SOURCE_DIR OUT_DIR [--partial]
# (--help documents the expected input tree; the work is done by prepare.py next to this file).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../../shell/env.sh"
exec python "$(dirname "${BASH_SOURCE[0]}")/prepare.py" "$@"
