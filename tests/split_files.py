"""Helpers for tests of prepared data folders."""

import json
from pathlib import Path

from notochord_rt.data.store import MANIFEST, SPLITS


def folder_bytes(dest: Path) -> dict:
    """The contents of the splits and the report (everything that must be deterministic),
    by role: the generation in the split file names is fresh at every write, the contents
    are not."""
    files: dict = {}
    for s in SPLITS:
        manifest = json.loads((dest / s / MANIFEST).read_bytes())
        for part, name in manifest.pop("files").items():
            files[f"{s}/{part}"] = (dest / s / name).read_bytes()
        files[f"{s}/manifest"] = manifest
        files[f"{s}/names"] = sorted(f.name.split(".")[0] for f in (dest / s).iterdir())
    files["report.json"] = (dest / "report.json").read_bytes()
    return files
