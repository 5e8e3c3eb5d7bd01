#!/usr/bin/env bash
# The main job on the embedded default, set-up included: scripts/demo.sh [pipeline flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/kws-pipeline --workdir=workdir "$@"
