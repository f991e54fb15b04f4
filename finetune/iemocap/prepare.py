"""IEMOCAP emotion recognition, 4 classes (neu, hap+exc, ang, sad), leave-one-session-out 5 folds.

Expected input (SOURCE_DIR = IEMOCAP_full_release/, as released by USC SAIL on request,
https://sail.usc.edu/iemocap/ ; licence: their release form):

  IEMOCAP_full_release/
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt          e.g. Ses01F_impro01.txt
    Session{1..5}/sentences/wav/<dialog>/<utterance>.wav     e.g. Ses01F_impro01/Ses01F_impro01_F000.wav

EmoEvaluation lines that start with '[' summarise one utterance (tab-separated):
  [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]
Kept: neu, hap, exc (relabelled hap, as s3prl/SUPERB), ang, sad: 5,531 utterances
(neu 1,708, hap 1,636, ang 1,103, sad 1,084); fru, sur, fea, dis, oth and xxx are dropped.

Manifest: label = neu|hap|ang|sad, fold = session 1-5, group = session + speaker (the F/M before
the utterance number, e.g. Ses01M). The sentence WAVs are already cut (no start/end).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ssamba.data.prepare import Checks, Item, PrepareError, Recipe, flac_target, require_dir, run_recipe

KEEP = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
EXPECTED_TOTAL = 5531
EXPECTED_PER_SESSION = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}


def collect(source: Path, checks: Checks) -> list[Item]:
    items, missing = [], []
    for session in range(1, 6):
        evaluation = require_dir(source / f"Session{session}" / "dialog" / "EmoEvaluation", f"Session{session} EmoEvaluation folder")
        found = 0
        for txt in sorted(evaluation.glob("*.txt")):
            for line_no, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.startswith("["):
                    continue
                fields = line.split("\t")
                if len(fields) < 3:
                    raise PrepareError(f"{txt}:{line_no}: expected '[start - end]<TAB>utterance<TAB>label<TAB>...', got {line!r}")
                utterance, code = fields[1].strip(), fields[2].strip()
                if code not in KEEP:
                    continue
                dialog, number = utterance.rsplit("_", 1)
                rel = Path(f"Session{session}") / "sentences" / "wav" / dialog / f"{utterance}.wav"
                if not (source / rel).is_file():
                    missing.append(rel.as_posix())
                    continue
                found += 1
                group = f"{utterance[:5]}{number[0]}"
                items.append(Item(source / rel, flac_target(rel), (KEEP[code],), fold=str(session), group=group))
        checks.count(f"Session{session} utterances in the 4 classes", found, EXPECTED_PER_SESSION[session])
    checks.missing("utterance WAVs named by EmoEvaluation", missing, len(items) + len(missing))
    checks.count("utterances in the 4 classes", len(items), EXPECTED_TOTAL)
    return items


RECIPE = Recipe(name="iemocap", description=__doc__, collect=collect, target_length=600)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
