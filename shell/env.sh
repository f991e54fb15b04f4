#!/usr/bin/env bash
# Source this file to get a ready Python environment for ssamba (idempotent).
#
#   . shell/env.sh
#
# - Uses $SSAMBA_VENV (default: <repo>/.venv), created with --system-site-packages so an
#   already installed torch (CPU or CUDA build) is reused instead of downloaded again.
# - Installs torch only when none is importable: $SSAMBA_TORCH (default "torch==2.13.0";
#   set e.g. SSAMBA_TORCH="torch --index-url https://download.pytorch.org/whl/cu124" for CUDA).
# - Installs ssamba itself in editable mode with the `dev` extra, only when setup.cfg or
#   requirements.txt changed since the last install.
# - Compiles the fused C++ CPU kernels once (`ssamba build`, a few minutes) into torch's
#   extension cache ($TORCH_EXTENSIONS_DIR), again only when their sources or that cache path
#   change; without a C++ compiler it says so and the `chunked` scan is used.
# Set SSAMBA_NO_VENV=1 to use the current interpreter as is (no venv, no installs).

SSAMBA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SSAMBA_ROOT

if [ "${SSAMBA_NO_VENV:-0}" != "1" ]; then
    SSAMBA_VENV="${SSAMBA_VENV:-$SSAMBA_ROOT/.venv}"
    PYTHON_BIN="${PYTHON:-python3}"
    if [ ! -x "$SSAMBA_VENV/bin/python" ]; then
        echo "[ssamba] creating virtualenv $SSAMBA_VENV" >&2
        "$PYTHON_BIN" -m venv --system-site-packages "$SSAMBA_VENV" || return 1 2>/dev/null || exit 1
    fi
    # shellcheck disable=SC1091
    . "$SSAMBA_VENV/bin/activate"
    if ! python -c "import torch" >/dev/null 2>&1; then
        echo "[ssamba] installing ${SSAMBA_TORCH:-torch==2.13.0}" >&2
        # shellcheck disable=SC2086
        python -m pip install -q ${SSAMBA_TORCH:-torch==2.13.0} || return 1 2>/dev/null || exit 1
    fi
    stamp="$SSAMBA_VENV/.ssamba-installed"
    want="$(cat "$SSAMBA_ROOT/setup.cfg" "$SSAMBA_ROOT/requirements.txt" | cksum)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "[ssamba] installing ssamba (editable, dev extra)" >&2
        python -m pip install -q -e "$SSAMBA_ROOT[dev]" || return 1 2>/dev/null || exit 1
        echo "$want" > "$stamp"
    fi
    kernel_stamp="$SSAMBA_VENV/.ssamba-kernels-built"
    kernel_want="$(cat "$SSAMBA_ROOT"/ssamba/models/csrc/* | cksum) ${TORCH_EXTENSIONS_DIR:-default}"
    if [ ! -f "$kernel_stamp" ] || [ "$(cat "$kernel_stamp")" != "$kernel_want" ]; then
        echo "[ssamba] building the fused C++ CPU kernels (once; \`ssamba build\` redoes it)" >&2
        ssamba build >&2 || echo "[ssamba] continuing without the fused kernels (the 'chunked' scan is used)" >&2
        echo "$kernel_want" > "$kernel_stamp"
    fi
fi
