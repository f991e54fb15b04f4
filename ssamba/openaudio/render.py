"""Rendering helpers: a Standard MIDI File writer, fluidsynth rendering and three TTS engines.

All external programs run through :func:`run_tool` with argument lists (never a shell); text goes
through stdin or an argument element, so no input is ever parsed by a shell. Every tool is checked
with :func:`require_tools`, which names the Debian package that provides it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from ssamba.audio.io import MAX_PEAK, decode_file, resample

SAMPLE_RATE = 16000
TOOL_PACKAGES = {
    "apt-get": "apt", "dpkg": "dpkg", "fluidsynth": "fluidsynth", "espeak-ng": "espeak-ng",
    "text2wave": "festival", "flite": "flite",
}
# festival speaks task C's validation clips only with these voices and lexicons installed beside it
FESTIVAL_VOICE_PACKAGES = (
    "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts", "festlex-cmu", "festlex-poslex",
)
TOOL_TIMEOUT_S = 300
TICKS_PER_BEAT = 480
MICROSECONDS_PER_BEAT = 500_000  # 120 bpm: one beat = 0.5 s


class ToolError(RuntimeError):
    """An external tool is missing or failed; the message names it and what to install."""


def missing_tools(tools: Sequence[str]) -> list[str]:
    """The tools of ``tools`` not on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def require_tools(tools: Sequence[str]) -> None:
    """Raise :class:`ToolError` naming the missing tools and the Debian packages to install."""
    missing = missing_tools(tools)
    if missing:
        packages = {TOOL_PACKAGES.get(t, t) for t in missing}
        if "text2wave" in missing:
            packages.update(FESTIVAL_VOICE_PACKAGES)
        raise ToolError(f"missing tools: {', '.join(missing)} (apt-get install {' '.join(sorted(packages))})")


def run_tool(args: Sequence[str], *, stdin: str | None = None, timeout: float = TOOL_TIMEOUT_S) -> None:
    """Run ``args`` (a list, no shell); raise :class:`ToolError` with its stderr on failure."""
    try:
        done = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ToolError(f"{args[0]}: not installed ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{args[0]}: no result after {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ToolError(f"{' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr.strip()[-500:]}")


# ---------------------------------------------------------------- 16-bit clips and fingerprints


def quantize(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16 with the scale libsndfile reads back (x 32768), so a
    16-bit file decoded to float and quantized again keeps its exact sample values."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def write_clip(path: Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write int16 samples as 16-bit FLAC (atomically: a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    soundfile.write(tmp, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    tmp.replace(path)


def read_mono(path: Path, sample_rate: int = SAMPLE_RATE, max_peak: float | None = MAX_PEAK) -> np.ndarray:
    """Decode any audio file to mono float32 at ``sample_rate`` (peak limit as :func:`decode_file`)."""
    audio, rate, _ = decode_file(path, max_peak)
    return resample(audio, rate, sample_rate)


# ---------------------------------------------------------------- MIDI


@dataclass(frozen=True)
class Note:
    """One note: start and length in seconds (at the writer's fixed 120 bpm), MIDI pitch, velocity."""

    start: float
    length: float
    pitch: int
    velocity: int
    channel: int = 0


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, notes: Sequence[Note], programs: Sequence[tuple[float, int, int]]) -> None:
    """Write a format-0 Standard MIDI File; ``programs``: (time in s, channel, GM program 0-127) changes."""
    ticks_per_second = TICKS_PER_BEAT * 1_000_000 / MICROSECONDS_PER_BEAT
    events: list[tuple[int, int, bytes]] = []  # (tick, order, bytes): note-offs, program changes, note-ons
    for time, channel, program in programs:
        if not (0 <= program <= 127 and 0 <= channel <= 15):
            raise ValueError(f"MIDI program {program} / channel {channel} out of range")
        events.append((int(round(time * ticks_per_second)), 1, bytes([0xC0 | channel, program])))
    for note in notes:
        if not (0 <= note.pitch <= 127 and 1 <= note.velocity <= 127):
            raise ValueError(f"MIDI note {note} out of range")
        on = int(round(note.start * ticks_per_second))
        off = int(round((note.start + note.length) * ticks_per_second))
        events.append((on, 2, bytes([0x90 | note.channel, note.pitch, note.velocity])))
        events.append((off, 0, bytes([0x80 | note.channel, note.pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    track = bytearray(b"\x00\xff\x51\x03" + MICROSECONDS_PER_BEAT.to_bytes(3, "big"))
    now = 0
    for tick, _, data in events:
        track += _varlen(tick - now) + data
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT)
    path.write_bytes(header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track))


def render_midi(midi: Path, soundfont: Path, out_wav: Path, *, effects: bool = False,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Render ``midi`` with fluidsynth and ``soundfont``; returns mono float32 at ``sample_rate``."""
    require_tools(["fluidsynth"])
    flag = "1" if effects else "0"
    run_tool(["fluidsynth", "-ni", "-q", "-r", str(sample_rate), "-F", str(out_wav),
              "-o", f"synth.reverb.active={flag}", "-o", f"synth.chorus.active={flag}", str(soundfont), str(midi)])
    return read_mono(out_wav, sample_rate)


# ---------------------------------------------------------------- TTS

TTS_ENGINES = ("espeak-ng", "festival", "flite")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")


def tts(engine: str, text: str, out_wav: Path, *, voice: str, speed: int = 160, pitch: int = 50,
        stretch: float = 1.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with ``engine``/``voice`` into ``out_wav``; returns mono float32 at ``sample_rate``.

    espeak-ng: ``voice`` like ``en-us+f3``, ``speed`` wpm, ``pitch`` 0-99. festival: ``voice`` one of
    :data:`FESTIVAL_VOICES`. flite: ``voice`` one of :data:`FLITE_VOICES`, ``stretch`` the duration factor.
    """
    if engine == "espeak-ng":
        require_tools(["espeak-ng"])
        run_tool(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out_wav), "--stdin"],
                 stdin=text)
    elif engine == "festival":
        require_tools(["text2wave"])
        if voice not in FESTIVAL_VOICES:
            raise ValueError(f"festival voice must be one of {FESTIVAL_VOICES}, got {voice!r}")
        run_tool(["text2wave", "-eval", f"(voice_{voice})", "-o", str(out_wav)], stdin=text)
    elif engine == "flite":
        require_tools(["flite"])
        if voice not in FLITE_VOICES:
            raise ValueError(f"flite voice must be one of {FLITE_VOICES}, got {voice!r}")
        run_tool(["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}", "-t", text, "-o", str(out_wav)])
    else:
        raise ValueError(f"TTS engine must be one of {TTS_ENGINES}, got {engine!r}")
    return read_mono(out_wav, sample_rate)


def espeak_voices() -> list[str]:
    """Language voice names espeak-ng knows (``espeak-ng --voices``)."""
    require_tools(["espeak-ng"])
    done = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, timeout=60, check=True)
    names = []
    for line in done.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4:
            names.append(parts[1])
    return sorted(set(names))
