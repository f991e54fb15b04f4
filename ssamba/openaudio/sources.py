"""The corpus sources (Debian `main` packages), the kind of each audio file, and the probe reservations.

Every clip of the corpus carries an ``origin``: the Debian package it was extracted from, or
``tts:<engine>`` / ``midi:<bank>`` for the synthetic top-up. :data:`CORPUS_ORIGINS` is the allow-list;
:data:`PROBE_RESERVED` names what the probe tasks use on their evaluation side (and 0 A.D.'s labelled
Foley, which task B cross-validates over). The leakage check (:mod:`ssamba.openaudio.leakage`) fails
the build when a corpus clip comes from anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SPEECH, MUSIC, ENVIRONMENTAL = "speech", "music", "environmental"
KINDS = (SPEECH, MUSIC, ENVIRONMENTAL)
EXCLUDE = "exclude"


@dataclass(frozen=True)
class Package:
    """A Debian package holding audio. ``rules``: (regex on the path inside the package, kind or
    ``"exclude"``), first match wins, else ``default``. ``archives``: zip files inside the package
    (path, member prefixes) whose audio members are extracted too."""

    name: str
    default: str
    rules: tuple[tuple[str, str], ...] = ()
    archives: tuple[tuple[str, tuple[str, ...]], ...] = ()
    lean: bool = True
    tiny: bool = False
    max_files_tiny: int | None = None

    def kind_of(self, rel_path: str) -> str:
        """Kind of the file at ``rel_path`` (posix path inside the unpacked package)."""
        for pattern, kind in self.rules:
            if re.search(pattern, rel_path, flags=re.IGNORECASE):
                return kind
        return self.default


_MUSIC_DIR = (r"(^|/)music/", MUSIC)
# 0 A.D.'s labelled Foley (attack, actor, resource, ...) is task B: never pretraining audio.
ZERO_AD_FOLEY = r"^audio/(attack|actor|resource|interface|action)/"

PACKAGES: tuple[Package, ...] = (
    Package("fillets-ng-data", ENVIRONMENTAL, (_MUSIC_DIR, (r"/sound/.*/en/", SPEECH))),
    Package("fillets-ng-data-cs", SPEECH),
    Package("fillets-ng-data-nl", SPEECH),
    Package("tuxpaint-stamps-default", ENVIRONMENTAL, ((r"_desc_|/symbols/(math|alphabets)/", SPEECH),)),
    Package("klettres-data", SPEECH),
    Package("ktuberling-data", SPEECH),
    Package("festvox-ru", EXCLUDE, ((r"/wav/", SPEECH),)),
    Package("wesnoth-1.16-music", MUSIC),
    Package("naev-data", ENVIRONMENTAL, (_MUSIC_DIR,)),
    Package("supertux-data", ENVIRONMENTAL, (_MUSIC_DIR,)),
    Package("widelands-data", ENVIRONMENTAL, (_MUSIC_DIR,)),
    Package("megaglest-data", ENVIRONMENTAL, (_MUSIC_DIR,)),
    Package("supertuxkart-data", ENVIRONMENTAL, (_MUSIC_DIR,), lean=False),
    Package(
        "0ad-data",
        EXCLUDE,
        ((ZERO_AD_FOLEY, EXCLUDE), (r"^audio/music/", MUSIC), (r"^audio/ambient/", ENVIRONMENTAL),
         (r"^audio/voice/", SPEECH)),
        archives=(("usr/share/games/0ad/mods/public/public.zip", ("audio/",)),),
        lean=False,
    ),
    Package("scratch", ENVIRONMENTAL, ((r"/(music|instruments|percussion|vocals)/", MUSIC),)),
    Package(
        "warzone2100-data",
        ENVIRONMENTAL,
        (_MUSIC_DIR, (r"/(voice|vo)/", SPEECH)),
        archives=(("usr/share/games/warzone2100/base.wz", ("audio/",)),),
    ),
    Package(
        "openarena-data",
        ENVIRONMENTAL,
        (_MUSIC_DIR,),
        archives=(("usr/share/games/openarena/baseoa/pak0.pk3", ("sound/", "music/")),),
    ),
    Package("lincity-ng-data", ENVIRONMENTAL, (_MUSIC_DIR,)),
    Package("freedink-data", ENVIRONMENTAL),
    Package("openclonk-data", ENVIRONMENTAL, ((r"music\.ocg/", MUSIC),)),
    Package("redeclipse-data", ENVIRONMENTAL, (_MUSIC_DIR,), lean=False),
    Package("bucklespring-data", ENVIRONMENTAL, tiny=True),
    Package("hydrogen-drumkits", MUSIC),
    Package("hydrogen-drumkits-effects", MUSIC),
    Package("sonic-pi-samples", MUSIC),
    Package("lmms-common", MUSIC, ((r"/samples/(waveforms|shapes)/", EXCLUDE),)),
    Package("sound-theme-freedesktop", ENVIRONMENTAL, tiny=True),
    Package("alsa-utils", SPEECH, tiny=True),
)
PACKAGES_BY_NAME = {package.name: package for package in PACKAGES}

# Files longer than this in a package whose files are otherwise short are produced music (freedink).
LONG_FILE_MUSIC_SECONDS = 30.0
LONG_FILE_MUSIC_PACKAGES = frozenset({"freedink-data", "fillets-ng-data"})

# Task A: GM program -> instrument family (95 programs).
FAMILIES: dict[str, tuple[int, ...]] = {
    "keyboard": tuple(range(0, 8)), "mallet": tuple(range(8, 16)), "organ": tuple(range(16, 21)),
    "reed": tuple(range(21, 24)) + tuple(range(64, 72)), "guitar": tuple(range(24, 32)),
    "bass": tuple(range(32, 40)), "string": tuple(range(40, 47)) + tuple(range(48, 52)),
    "vocal": tuple(range(52, 55)), "brass": tuple(range(56, 64)), "flute": tuple(range(72, 80)),
    "synth_lead": tuple(range(80, 88)),
}


def heldout_programs(family_programs: tuple[int, ...]) -> set[int]:
    """Every 4th program of a family (the 4th, 8th, ...) is FluidR3's validation side."""
    return {p for i, p in enumerate(family_programs) if i % 4 == 3}


# FluidR3's held-out programs are task A's validation side: the top-up music never uses them.
TASK_A_VALID_PROGRAMS = frozenset(p for programs in FAMILIES.values() for p in heldout_programs(programs))

# Synthetic top-up: the only engines and banks allowed to make pretraining audio.
TTS_ESPEAK = "tts:espeak-ng"
BANK_FLUIDR3 = "midi:FluidR3_GM"
BANK_MUSESCORE = "midi:MuseScore_General"
# sound bank file name -> origin; anything else (csound's sf_GMbank, a library's bundled bank) is refused.
ALLOWED_BANK_FILES = {"FluidR3_GM.sf2": BANK_FLUIDR3, "MuseScore_General_Full.sf3": BANK_MUSESCORE,
                      "MuseScore_General.sf3": BANK_MUSESCORE}
BANK_PACKAGES = {"fluid-soundfont-gm": "usr/share/sounds/sf2/FluidR3_GM.sf2",
                 "musescore-general-soundfont": "usr/share/sounds/sf3/MuseScore_General_Full.sf3"}
TEXT_PACKAGE = "fortunes-min"
TEXT_DIR = "usr/share/games/fortunes"

CORPUS_ORIGINS = frozenset({p.name for p in PACKAGES} | {TTS_ESPEAK, BANK_FLUIDR3, BANK_MUSESCORE})


@dataclass(frozen=True)
class Reservation:
    """A source a probe task evaluates on: no corpus clip may come from it."""

    task: str
    origin_pattern: str  # regex on the clip's origin
    path_pattern: str | None = None  # regex on the clip's path inside the origin (None: the whole origin)
    why: str = field(default="", compare=False)

    def matches(self, origin: str, rel_path: str) -> bool:
        if not re.fullmatch(self.origin_pattern, origin, flags=re.IGNORECASE):
            return False
        return self.path_pattern is None or re.search(self.path_pattern, rel_path) is not None


PROBE_RESERVED: tuple[Reservation, ...] = (
    Reservation("A", r".*(csound|sf_gmbank).*", None, "task A's test bank (csound sf_GMbank)"),
    Reservation("B", r"0ad-data", ZERO_AD_FOLEY, "task B's labelled 0 A.D. Foley (cross-validated)"),
    Reservation("C", r"tts:festival.*", None, "task C's validation engine (festival kal/ked/slt)"),
    Reservation("C", r"tts:flite.*", None, "task C's test engine (flite kal/awb/rms/slt/kal16)"),
)


def packages_for(variant: str) -> tuple[Package, ...]:
    """The packages of a corpus variant: ``full``, ``lean`` (no 0ad/redeclipse/supertuxkart) or ``tiny``."""
    if variant == "full":
        return PACKAGES
    if variant == "lean":
        return tuple(p for p in PACKAGES if p.lean)
    if variant == "tiny":
        return tuple(p for p in PACKAGES if p.tiny)
    raise ValueError(f"corpus variant must be full, lean or tiny, got {variant!r}")
