"""Any folder of audio (searched recursively) -> records keyed by relative path.

With ``labels_from_dirs=True`` the first sub-folder name becomes the clip's label, e.g.
``root/dog/001.wav`` -> ``["dog"]``.
"""

from __future__ import annotations

from pathlib import Path

from ssamba.audio.io import AUDIO_EXTENSIONS
from ssamba.data.sources import AudioRecord, display_path, make_key

SOURCE_NAME = "folder"


def scan(root: str | Path, labels_from_dirs: bool = False, source_name: str = SOURCE_NAME) -> list[AudioRecord]:
    """Every audio file under ``root`` (by extension, case-insensitive), sorted by relative path.

    Names that are not valid UTF-8 are kept (``rel_path`` shows their bytes as ``\\xNN``); dangling
    symlinks and special files with an audio extension are kept too, for the writer to reject.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} is not a directory")
    records: list[AudioRecord] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or path.is_dir():
            continue  # dangling symlinks and FIFOs stay in: the writer lists them as rejects
        rel = path.relative_to(root)
        labels: list[int | str] = [display_path(rel.parts[0])] if labels_from_dirs and len(rel.parts) > 1 else []
        records.append(
            AudioRecord(
                key=make_key(rel.as_posix()), path=str(path), source=source_name, rel_path=display_path(rel.as_posix()), labels=labels
            )
        )
    if not records:
        raise ValueError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {root}")
    return records
