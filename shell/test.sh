#!/usr/bin/env bash
# Run the ssamba test suite (sets up the environment first; see shell/env.sh).
#
#   ./shell/test.sh            # default suite (a few minutes on 2 CPU cores)
#   ./shell/test.sh --slow     # only the slow tests (multi-process training, full-size models)
#   ./shell/test.sh -k scan    # extra arguments go to pytest
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$SSAMBA_ROOT"
if [ "${1:-}" = "--slow" ]; then
    shift
    exec python -m pytest -m slow "$@"
fi
exec python -m pytest "$@"
