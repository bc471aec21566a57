#!/usr/bin/env bash
# Set up everything the tests need (scripts/setup.sh --dev), then lint and test.
# Usage: bash scripts/test.sh [--fast] [pytest args...]
#   --fast   leave out the tests marked `slow` (pytest -m "not slow"): the quick local loop.
#            CI (.ci/run) runs everything: it calls this script without arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=()
if [ "${1:-}" = --fast ]; then
    shift
    fast=(-m "not slow")
fi
bash scripts/setup.sh --dev
.venv/bin/python -m ruff check src tests benchmarks
# CI runs the sampler's property tests over the full 10^5 events of the spec (minutes);
# a local run samples 4,000 unless NOTOCHORD_PROPERTY_EVENTS says otherwise.
if [ "${CI:-}" = true ]; then
    export NOTOCHORD_PROPERTY_EVENTS=${NOTOCHORD_PROPERTY_EVENTS:-100000}
fi
exec .venv/bin/python -m pytest -q "${fast[@]}" "$@"
