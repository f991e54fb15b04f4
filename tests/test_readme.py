"""The README's Python code runs verbatim, against the files it names (an export, a clip)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import tiny_export

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCKS = [(README.read_text()[: match.start()].count("\n") + 1, match.group(1)) for match in PYTHON_BLOCK.finditer(README.read_text())]
CLIP_SECONDS = 2.0
SAMPLE_RATE = 16000


def test_readme_has_python_blocks() -> None:
    assert BLOCKS, "README.md has no ```python blocks to run"


@pytest.fixture
def readme_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the paths the README uses: exp/demo/export and clip.flac."""
    export = tiny_export(tmp_path / "fixture")
    (tmp_path / "exp" / "demo").mkdir(parents=True)
    export.rename(tmp_path / "exp" / "demo" / "export")
    t = np.arange(int(CLIP_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    soundfile.write(tmp_path / "clip.flac", 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)), SAMPLE_RATE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(readme_cwd: Path, line: int, code: str) -> None:
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 -- our own README
    if "encoder" in namespace and "clip" in namespace:  # the pretrained-encoder snippet: real outputs
        encoder, clip = namespace["encoder"], namespace["clip"]
        assert tuple(clip.shape) == (1, encoder.config.embed_dim)
        assert tuple(namespace["features"].shape) == (encoder.config.target_length, encoder.config.num_mel_bins)
