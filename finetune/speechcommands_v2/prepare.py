"""Speech Commands V2 (35 words): 105,829 one-second clips, official validation/testing lists.

Expected input (SOURCE_DIR = the folder you extracted speech_commands_v0.02.tar.gz into; the
archive has no top-level folder, so create one first: mkdir sc2 && tar xzf speech_commands_v0.02.tar.gz -C sc2):

  sc2/
    <word>/<speakerhash>_nohash_<n>.wav    35 word folders, 16 kHz mono WAV, ~1 s
    _background_noise_/*.wav               6 long noise recordings (+ README.md)
    validation_list.txt  testing_list.txt  one word/file.wav per line
    LICENSE, README.md, ...

Get it from TensorFlow's download bucket,
http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz (about 2.3 GB; CC BY 4.0).
The separate speech_commands_test_set_v0.02.tar.gz is a different test set (SUPERB) and is not used.

Split: valid = validation_list.txt (9,981), test = testing_list.txt (11,005), train = all other
word clips (84,843). Label = the word folder, group = the speaker hash. The clips are already
16 kHz mono, so they are used in place (--copy-audio converts them to FLAC under OUT_DIR);
_background_noise_ is converted to OUT_DIR/background_noise/ for noise augmentation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ssamba.data.prepare import Checks, Item, Recipe, copy_speech_commands_noise, run_recipe, speech_commands_items


def collect(source: Path, checks: Checks) -> list[Item]:
    return speech_commands_items(source, checks, total=105_829, classes=35, valid=9_981, test=11_005)


RECIPE = Recipe(name="speechcommands_v2", description=__doc__, collect=collect, target_length=128,
                extra_audio=copy_speech_commands_noise)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
