#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): GPU tests, triton/chunked/cuda scan parity and
# speed, ssamba-tiny/base training steps per backend in fp32 and bf16, `ssamba pretrain` with resume,
# and the efficiency sweep against SSAST past 22k tokens. About 6-9 minutes on one H100; needs only
# this checkout and the machine's torch (with triton): no network, nothing installed.
#
#   bash benchmarks/gpu_check.sh                          # results in $OUT, else ./gpu_check_out
#   bash benchmarks/gpu_check.sh --mamba-ssm-archive mamba_ssm-2.3.2.post1.tar.gz --total-minutes 20
#   bash benchmarks/gpu_check.sh --cpu-smoke --out-dir /tmp/gpu_check_smoke   # test the script on CPU
#
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (updated after every stage). Extra
# arguments go to benchmarks/gpu_check.py (--help lists them). A hard wall-clock limit
# (GPU_CHECK_TIMEOUT_S, default 540 s) stops everything; the files keep the finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-540}" python benchmarks/gpu_check.py "$@"
