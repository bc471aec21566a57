#!/usr/bin/env bash
# Set up notochord_rt in ./.venv, with the Debian packages it uses where apt is available.
#   bash scripts/setup.sh         for playing: fluidsynth + a GM SoundFont (WAV rendering)
#   bash scripts/setup.sh --dev   everything in scripts/apt-packages.txt, all extras, and the
#                                 reference notochord==0.8.0 for the parity tests/benchmarks
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0; [ "${1:-}" = "--dev" ] && dev=1
if [ $dev = 1 ]; then
    pkgs=$(grep -v '^#' scripts/apt-packages.txt | tr '\n' ' ')
    extras='dev,train,live,link,plot,corpus,web'
else
    pkgs="fluidsynth fluid-soundfont-gm"
    extras='live,plot'
fi
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq
        # shellcheck disable=SC2086
        $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "note: please install these packages with your system's package manager:$missing" >&2
    fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[$extras]"
if [ $dev = 1 ]; then
    # The reference implementation, for parity tests and benchmarks. Its own pins
    # (torch<2.11) are wrong for us, so it goes in without dependencies; its few light
    # imports are in tests/reference-requirements.txt.
    .venv/bin/pip install -q --no-deps notochord==0.8.0
    .venv/bin/pip install -q -c constraints.txt -r tests/reference-requirements.txt
fi
