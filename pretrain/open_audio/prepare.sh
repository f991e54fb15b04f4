#!/usr/bin/env bash
# Open real-audio pretraining corpus from Debian `main` (speech, music, environmental), as shards.
#
# usage: pretrain/open_audio/prepare.sh [--lean|--tiny] [--stage N] [--stop-stage N]
#            [--tts-hours H] [--music-hours H] [--probes DIR] [--data DIR] [--workers N]
#
#   --lean          drop 0ad-data, redeclipse-data and supertuxkart-data (2.6 GB of .debs, about 23 h)
#   --tiny          three small packages, a few MB (tests)
#   --tts-hours H   synthetic top-up: H hours of espeak-ng speech in 44 languages (stage 4)
#   --music-hours H synthetic top-up: H hours of random MIDI rendered with FluidR3 / MuseScore General
#   --probes DIR    probe manifests (folder searched for manifest.csv) for the leakage check
#                   (default: $DATA/probes, as written by finetune/open_audio_probes/*/prepare.sh)
#   --data DIR      data folder (default: data/open_audio; .debs, unpacked packages, clips, shards)
#
# stages (each resumable: a rerun skips finished packages, sources and shards):
#   0  check the tools (apt-get, dpkg)
#   1  apt-get download the packages (no installation) into $DATA/debs
#   2  dpkg -x each package into $DATA/raw/<package> (+ audio members of zip archives inside)
#   3  convert to 16 kHz mono 16-bit FLAC, cut files longer than 10 s into 10 s segments,
#      drop digital silence and clips under 0.3 s, tag each clip with its source and kind
#   4  optional synthetic top-up (--tts-hours, --music-hours)
#   5  leakage check: source allow-list + probe clip fingerprints; fails the build on a leak;
#      writes $DATA/<variant>/train-{speech,music,environmental}.csv and eval.csv (2% of source
#      files held out)
#   6  ssamba shards -> $DATA/<variant>/shards/{speech,music,environmental,eval}
#   7  report hours per source and per kind ($DATA/<variant>/report.json)
set -euo pipefail
. "$(dirname "$0")/../../shell/env.sh"

stage=0
stop_stage=7
variant=full
tts_hours=0
music_hours=0
DATA="${DATA:-data/open_audio}"
probes=""
WORKERS="${WORKERS:-$(nproc)}"
while [ $# -gt 0 ]; do
    case "$1" in
        --stage) stage="$2"; shift 2 ;;
        --stop-stage) stop_stage="$2"; shift 2 ;;
        --lean) variant=lean; shift ;;
        --tiny) variant=tiny; shift ;;
        --tts-hours) tts_hours="$2"; shift 2 ;;
        --music-hours) music_hours="$2"; shift 2 ;;
        --probes) probes="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
probes="${probes:-$DATA/probes}"
corpus=(python -m ssamba.openaudio.corpus --data "$DATA" --variant "$variant" --workers "$WORKERS")
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if run_stage 0; then
    for tool in apt-get dpkg; do
        command -v "$tool" >/dev/null || { echo "missing tool: $tool (a Debian/Ubuntu system is needed)" >&2; exit 1; }
    done
fi
if run_stage 1; then
    echo "stage 1: apt-get download ($variant) -> $DATA/debs"
    "${corpus[@]}" fetch --tts-hours "$tts_hours" --music-hours "$music_hours"
fi
if run_stage 2; then
    echo "stage 2: unpack -> $DATA/raw"
    "${corpus[@]}" unpack
fi
if run_stage 3; then
    echo "stage 3: convert -> $DATA/$variant/clips"
    "${corpus[@]}" convert
fi
if run_stage 4; then
    echo "stage 4: synthetic top-up (tts $tts_hours h, music $music_hours h)"
    "${corpus[@]}" topup --tts-hours "$tts_hours" --music-hours "$music_hours"
fi
if run_stage 5; then
    echo "stage 5: leakage check against $probes"
    probe_args=()
    [ -d "$probes" ] && probe_args=(--probes "$probes")
    [ -d "$probes" ] || echo "  (no probe folder yet: checking the source allow-list only)"
    "${corpus[@]}" check "${probe_args[@]}"
fi
if run_stage 6; then
    echo "stage 6: shards -> $DATA/$variant/shards"
    for kind in speech music environmental; do
        manifest="$DATA/$variant/train-$kind.csv"
        [ -f "$manifest" ] || continue
        ssamba shards manifest "$manifest" -o "$DATA/$variant/shards/$kind" --workers "$WORKERS"
    done
    ssamba shards manifest "$DATA/$variant/eval.csv" -o "$DATA/$variant/shards/eval" --workers "$WORKERS"
fi
if run_stage 7; then
    echo "stage 7: report"
    "${corpus[@]}" report
fi
