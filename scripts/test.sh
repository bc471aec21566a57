#!/usr/bin/env bash
# Set up everything the tests need (scripts/setup.sh --dev), then lint and test.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/python -m ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
