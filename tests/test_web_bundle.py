"""The committed web bundle matches its sources.

``scripts/build-web.sh`` writes ``build-manifest.json`` next to the bundle: the sha256 of
every source file (web/src, web/public, package.json, package-lock.json, the script) and
of every output. Without node, the test checks both against the checkout: a changed source
that was not rebuilt, or a bundle edited by hand, fails. Where web/node_modules is
installed (``cd web && npm ci``), it also rebuilds into a temporary folder and compares
the files byte for byte (esbuild's output is deterministic).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from notochord_rt.apps.web.static import STATIC_DIR

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = STATIC_DIR / "build-manifest.json"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def test_sources_are_those_the_bundle_was_built_from() -> None:
    m = manifest()
    listed = set(m["sources"])
    on_disk = {str(p.relative_to(ROOT)) for d in ("web/src", "web/public")
               for p in (ROOT / d).iterdir() if p.is_file()}
    assert on_disk <= listed, f"sources added since the build: {sorted(on_disk - listed)} " \
                              "(run bash scripts/build-web.sh)"
    stale = [p for p, h in m["sources"].items() if not (ROOT / p).exists() or sha(ROOT / p) != h]
    assert not stale, f"sources changed since the bundle was built: {stale} " \
                      "(run bash scripts/build-web.sh and commit the bundle)"


def test_bundle_files_are_the_built_ones() -> None:
    m = manifest()
    served = {p.name for p in STATIC_DIR.iterdir() if p.is_file()} - {MANIFEST.name}
    assert served == set(m["outputs"]), "files in the static folder that the build did not make"
    edited = [f for f, h in m["outputs"].items() if sha(STATIC_DIR / f) != h]
    assert not edited, f"bundle files differ from the build: {edited}"


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "web/node_modules/.bin/esbuild").exists()
                    or shutil.which("node") is None,
                    reason="needs node and web/node_modules (cd web && npm ci)")
def test_rebuilding_gives_the_committed_bundle(tmp_path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts/build-web.sh"), str(tmp_path)], check=True,
                   cwd=ROOT, capture_output=True, timeout=300)
    for f in manifest()["outputs"]:
        assert (tmp_path / f).read_bytes() == (STATIC_DIR / f).read_bytes(), f
    assert json.loads((tmp_path / MANIFEST.name).read_text()) == manifest()
