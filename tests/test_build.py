"""Building the fused kernels: stale locks are cleared, live ones named, `ssamba info` never waits,
and a missing compiler falls back to the chunked scan with one warning. Each case runs in a fresh
process under a timeout, so a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssamba.models import fused_scan
from ssamba.models.build import BUILD_LOCK_FILE, TORCH_LOCK_FILE, BuildLock

# Loading a current cached build takes seconds; these limits only catch waiting forever.
LOAD_TIMEOUT_S = 180
STATUS_SCRIPT = "from ssamba.models.fused_scan import fused_status; print(fused_status() or 'usable')"


def _run(code_or_args: str | list[str], extensions_dir: Path, **env: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else [sys.executable, *code_or_args]
    environment = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions_dir), **env}
    return subprocess.run(args, capture_output=True, text=True, timeout=LOAD_TIMEOUT_S, env=environment)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(child.stdout)


@pytest.fixture
def cached_build(tmp_path: Path) -> Path:
    """A copy of this session's current build in a private extensions directory (no compiling)."""
    reason = fused_scan.fused_status()
    if reason is not None:
        pytest.skip(f"fused kernels unavailable here: {reason}")
    extensions = tmp_path / "extensions"
    shutil.copytree(fused_scan.fused_build_directory(), extensions / fused_scan._EXTENSION_NAME)
    for leftover in (BUILD_LOCK_FILE, TORCH_LOCK_FILE):
        (extensions / fused_scan._EXTENSION_NAME / leftover).unlink(missing_ok=True)
    return extensions


@pytest.fixture
def compiler_present() -> None:
    reason = fused_scan._compiler_missing()
    if reason is not None:
        pytest.skip(reason)


def test_stale_locks_of_a_killed_build_are_cleared(cached_build: Path) -> None:
    build_dir = cached_build / fused_scan._EXTENSION_NAME
    dead = _dead_pid()
    (build_dir / TORCH_LOCK_FILE).touch()  # what a SIGTERM'd torch build leaves behind
    (build_dir / BUILD_LOCK_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": time.time() - 60}))
    result = _run(STATUS_SCRIPT, cached_build)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "usable"
    assert f"stale build lock {build_dir / BUILD_LOCK_FILE}: its owner, pid {dead}" in result.stderr
    assert f"removed the stale build lock {build_dir / TORCH_LOCK_FILE}" in result.stderr
    assert not (build_dir / TORCH_LOCK_FILE).exists() and not (build_dir / BUILD_LOCK_FILE).exists()


def test_waiting_on_a_live_build_says_so_and_is_bounded(tmp_path: Path, compiler_present: None) -> None:
    extensions = tmp_path / "extensions"
    (extensions / fused_scan._EXTENSION_NAME).mkdir(parents=True)
    lock = BuildLock(extensions / fused_scan._EXTENSION_NAME / BUILD_LOCK_FILE)
    assert lock.try_acquire()
    try:
        result = _run(STATUS_SCRIPT, extensions, SSAMBA_BUILD_WAIT_S="2")
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    assert f"waiting for the fused kernel build by pid {os.getpid()} on {socket.gethostname()}" in result.stderr
    assert f"locked by pid {os.getpid()}" in result.stdout and "gave up after waiting" in result.stdout
    assert "compiling" not in result.stderr


def test_info_neither_compiles_nor_waits(tmp_path: Path, cached_build: Path) -> None:
    empty = tmp_path / "empty"
    result = _run(["-m", "ssamba", "info"], empty)
    assert result.returncode == 0, result.stderr
    assert "fused      unavailable: not built yet: run `ssamba build`" in result.stdout
    assert not list(empty.rglob("*.so")) and "compiling" not in result.stderr

    lock = BuildLock(cached_build / fused_scan._EXTENSION_NAME / BUILD_LOCK_FILE)
    assert lock.try_acquire()
    try:
        result = _run(["-m", "ssamba", "info"], cached_build)
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    assert f"fused      unavailable: the fused kernel build is locked by pid {os.getpid()}" in result.stdout
    assert "waiting" not in result.stderr


def test_missing_compiler_falls_back_to_chunked_with_one_warning(tmp_path: Path) -> None:
    script = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from ssamba.models.encoder import AudioMambaEncoder, preset_config\n"
        "from ssamba.models.scan import resolve_backend\n"
        "encoder = AudioMambaEncoder(preset_config('ssamba-tiny', embed_dim=32, depth=2, num_mel_bins=32, target_length=32))\n"
        "for _ in range(3):\n"
        "    out = encoder(torch.randn(1, 32, 32))\n"
        "print(resolve_backend(None, torch.device('cpu')), bool(torch.isfinite(out).all()))\n"
    )
    result = _run(script, tmp_path / "extensions", CXX="/nonexistent/c++")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["chunked", "True"]
    warning_lines = [line for line in result.stderr.splitlines() if "Warning" in line]
    assert len(warning_lines) == 1, result.stderr
    assert "fused CPU kernel unavailable (no C++ compiler (/nonexistent/c++) found); using 'chunked'" in warning_lines[0]
    assert "compiling" not in result.stderr


def test_build_command_reports_failure_without_a_compiler(tmp_path: Path) -> None:
    result = _run(["-m", "ssamba", "build"], tmp_path / "extensions", CXX="/nonexistent/c++")
    assert result.returncode == 1
    assert "fused CPU kernels unavailable: no C++ compiler (/nonexistent/c++) found; the 'chunked' scan will be used" in result.stderr
