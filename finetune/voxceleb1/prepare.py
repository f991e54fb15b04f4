"""VoxCeleb1 speaker identification: 153,516 utterances of 1,251 speakers, iden_split.txt.

Expected input (SOURCE_DIR), either layout of the two owner archives (the dev archive comes in
four parts: cat vox1_dev_wav_parta* > vox1_dev_wav.zip):

  voxceleb1/                                  voxceleb1/
    iden_split.txt                              iden_split.txt
    wav/<speaker>/<youtube_id>/<nnnnn>.wav      dev/wav/<speaker>/<youtube_id>/<nnnnn>.wav
      (both zips unzipped into one folder)      test/wav/<speaker>/<youtube_id>/<nnnnn>.wav (s3prl layout)

Get the archives and iden_split.txt from the VGG VoxCeleb site
(https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html; registration required; CC BY 4.0 per the site).
iden_split.txt: one line per utterance, `<set> <speaker>/<youtube_id>/<utt>.wav`, set 1 = train
(138,361), 2 = valid (6,904), 3 = test (8,251). The test rows need BOTH archives.

Manifest: label = speaker id (id10001 ... id11251), split from the set, group = youtube id when no
video crosses the splits (otherwise no group column, with a warning). Audio is 16 kHz WAV and is
used in place (--copy-audio converts it to FLAC).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ssamba.data.prepare import Checks, Item, PrepareError, Recipe, flac_target, groups_or_blank, require_file, run_recipe

SETS = {"1": "train", "2": "valid", "3": "test"}
EXPECTED = {"train": 138_361, "valid": 6_904, "test": 8_251}
EXPECTED_SPEAKERS = 1251


def collect(source: Path, checks: Checks) -> list[Item]:
    split_file = require_file(source / "iden_split.txt", "iden_split.txt")
    roots = [r for r in (source / "wav", source / "dev" / "wav", source / "test" / "wav") if r.is_dir()]
    if not roots:
        raise PrepareError(f"{source}: no wav/ (or dev/wav/ and test/wav/) folder (see --help)")
    items, missing = [], []
    for line_no, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in SETS or fields[1].count("/") != 2:
            raise PrepareError(f"{split_file}:{line_no}: expected '<1|2|3> <speaker>/<video>/<utt>.wav', got {line!r}")
        rel = fields[1]
        path = next((r / rel for r in roots if (r / rel).is_file()), None)
        if path is None:
            missing.append(rel)
            continue
        speaker, video, _ = rel.split("/")
        items.append(Item(path, flac_target(rel), (speaker,), split=SETS[fields[0]], group=video))
    listed = len(items) + len(missing)
    checks.missing("utterances listed in iden_split.txt", missing, listed)
    for split, expected in EXPECTED.items():
        checks.count(f"iden_split.txt {split} utterances", sum(i.split == split for i in items), expected)
    checks.count("speakers", len({i.labels[0] for i in items}), EXPECTED_SPEAKERS)
    return groups_or_blank(items, checks, "video")


RECIPE = Recipe(name="voxceleb1", description=__doc__, collect=collect, target_length=1024)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
