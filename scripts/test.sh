#!/usr/bin/env bash
# Set up a virtual environment with everything the tests need, then lint and test.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e '.[dev,train,live,plot,corpus]'
# The reference implementation, for the parity tests and benchmarks. Its own pins
# (torch<2.11) are wrong for us, so it is installed without dependencies and its few
# light imports are listed in tests/reference-requirements.txt.
.venv/bin/pip install -q --no-deps notochord==0.8.0
.venv/bin/pip install -q -c constraints.txt -r tests/reference-requirements.txt
.venv/bin/python -m ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
