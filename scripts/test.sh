#!/usr/bin/env bash
# The test suite, set-up included: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest tests -q "$@"
