"""Speech Commands V1 (30 words): 64,727 one-second clips, official validation/testing lists.

Expected input (SOURCE_DIR = the folder you extracted speech_commands_v0.01.tar.gz into; the
archive has no top-level folder, so create one first: mkdir sc1 && tar xzf speech_commands_v0.01.tar.gz -C sc1):

  sc1/
    <word>/<speakerhash>_nohash_<n>.wav    30 word folders, 16 kHz mono WAV, ~1 s
    _background_noise_/*.wav               6 long noise recordings (+ README.md)
    validation_list.txt  testing_list.txt  one word/file.wav per line
    LICENSE, README.md, ...

Get it from TensorFlow's download bucket,
http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz (about 1.4 GB; CC BY 4.0).
This is SSAMBA's 30-class "speechcommands_v1" task (PSLA/AST style), NOT SUPERB's 12-class KS1
(which uses a hash split and the separate test archive; see finetune/speechcommands_v1/README.md).

Split: valid = validation_list.txt, test = testing_list.txt, train = all other word clips.
Label = the word folder, group = the speaker hash. Only the total (64,727) is checked: the
per-list sizes of v0.01 could not be verified. Clips are used in place (16 kHz mono);
_background_noise_ is converted to OUT_DIR/background_noise/ for noise augmentation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ssamba.data.prepare import Checks, Item, Recipe, copy_speech_commands_noise, run_recipe, speech_commands_items


def collect(source: Path, checks: Checks) -> list[Item]:
    return speech_commands_items(source, checks, total=64_727, classes=30, valid=None, test=None)


RECIPE = Recipe(name="speechcommands_v1", description=__doc__, collect=collect, target_length=128,
                extra_audio=copy_speech_commands_noise)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
