#!/usr/bin/env bash
# Rebuild the web playground's bundle (notochord-rt web) from web/ with esbuild.
#   bash scripts/build-web.sh            into src/notochord_rt/apps/web/static (committed)
#   bash scripts/build-web.sh OUTDIR     elsewhere (the tests rebuild into a temp folder and
#                                        compare)
# Needs node + npm (installs web/node_modules with `npm ci` when missing). Writes
# build-manifest.json: the sha256 of every source and output file, which the tests check
# against the committed sources without needing node.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-src/notochord_rt/apps/web/static}
[ -x web/node_modules/.bin/esbuild ] || (cd web && npm ci --no-audit --no-fund --loglevel=error)
mkdir -p "$out"
web/node_modules/.bin/esbuild web/src/main.js --bundle --format=esm --minify \
    --target=es2020 --legal-comments=eof --log-level=warning --outfile="$out/app.js"
cp web/public/index.html web/public/style.css "$out/"
cp web/node_modules/spessasynth_lib/dist/spessasynth_processor.min.js "$out/"
cp web/node_modules/spessasynth_lib/LICENSE "$out/spessasynth_lib-LICENSE.txt"
node - "$out" <<'JS'
const fs = require("fs"), path = require("path"), crypto = require("crypto");
const out = process.argv[2];
const sha = (p) => crypto.createHash("sha256").update(fs.readFileSync(p)).digest("hex");
const list = (d) => fs.readdirSync(d).sort().map((f) => path.posix.join(d, f));
const sources = ["scripts/build-web.sh", "web/package.json", "web/package-lock.json",
                 ...list("web/src"), ...list("web/public")];
const outputs = fs.readdirSync(out).filter((f) => f !== "build-manifest.json").sort();
const manifest = {
  note: "written by scripts/build-web.sh; tests/test_web_bundle.py checks it",
  sources: Object.fromEntries(sources.map((p) => [p, sha(p)])),
  outputs: Object.fromEntries(outputs.map((f) => [f, sha(path.join(out, f))])),
};
fs.writeFileSync(path.join(out, "build-manifest.json"), JSON.stringify(manifest, null, 1) + "\n");
JS
echo "built the web bundle into $out" >&2
