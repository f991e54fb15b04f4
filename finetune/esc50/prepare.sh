#!/usr/bin/env bash
# ESC-50 -> 16 kHz FLAC + manifest.csv + stats.json. Usage: finetune/esc50/prepare.sh SOURCE_DIR OUT_DIR [--partial]
# (--help documents the expected input tree; the work is done by prepare.py next to this file).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../../shell/env.sh"
exec python "$(dirname "${BASH_SOURCE[0]}")/prepare.py" "$@"
