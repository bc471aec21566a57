"""``notochord-rt models``: the registry of named models and the local cache.

Examples::

    notochord-rt models list                  # name, parameters, size, source, licence, cached
    notochord-rt models pull notochord-lakh   # download, check, convert once (the only download)
    notochord-rt models info notochord-lakh   # architecture, parameters, data, model card
    notochord-rt models info run/model.safetensors
    notochord-rt models path notochord-lakh   # the cached file, for scripts
    notochord-rt models remove notochord-lakh [--forget]

The registry is ``notochord_rt/assets/models.toml`` plus ``$NOTOCHORD_RT_REGISTRY``; the
cache is ``$NOTOCHORD_RT_HOME`` or the user's cache folder. See docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import UserError

NAME = "models"
HELP = "list, pull, inspect and remove named models (the registry and the cache)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("list", help="every registry model: parameters, size, source, licence, "
                                    "whether it is cached")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("pull", help="download a model into the cache, check and convert it")
    p.add_argument("name", help="registry name (or alias)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p = sub.add_parser("info", help="architecture, parameter count, training data, model card")
    p.add_argument("model", metavar="NAME|PATH", help="registry name, or a checkpoint file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("path", help="print the cached file of a model (error if not cached)")
    p.add_argument("name", help="registry name (or alias)")
    p = sub.add_parser("remove", help="delete a model from the cache")
    p.add_argument("name", help="registry name (or alias)")
    p.add_argument("--forget", action="store_true",
                   help="also forget the checksum recorded at its first download")


def _out(text: str) -> None:
    print(text, file=sys.stdout)  # noqa: T201


def _list(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError
    from ..hub import cache, registry
    from ..hub.info import checkpoint_info, short_count, short_size

    rows = []
    for entry in registry.load_registry().values():
        path = cache.cached_model(entry)
        params = entry.parameters or None
        if path is not None:
            try:
                params = checkpoint_info(path)["parameters"]
            except CheckpointError as e:  # a damaged cache entry: say so, keep listing
                params = None
                log.warning("%s: %s", entry.name, e)
        size = path.stat().st_size if path else entry.size_bytes
        rows.append({"name": entry.name, "aliases": list(entry.aliases), "parameters": params,
                     "bytes": size or None, "source": entry.url or "bundled",
                     "licence": entry.licence,
                     "cached": "bundled" if entry.is_bundled else ("yes" if path else "no"),
                     "title": entry.title})
    if args.json:
        _out(json.dumps({"home": str(cache.home()), "models": rows}, indent=1))
        return 0
    head = f"{'name':17}{'params':>8}{'size':>10}  {'cached':8}{'licence':10}  source"
    lines = [head]
    for r in rows:
        lic = (r["licence"] or "?").split(" ")[0]
        src = r["source"] if len(r["source"]) <= 60 else "..." + r["source"][-57:]
        lines.append(f"{r['name']:17}{short_count(r['parameters']):>8}"
                     f"{short_size(r['bytes']):>10}  {r['cached']:8}{lic:10}  {src}")
        if r["aliases"]:
            lines.append(f"{'':19}also: {', '.join(r['aliases'])}")
    lines.append(f"cache: {cache.home()}  (pull with `notochord-rt models pull NAME`)")
    _out("\n".join(lines))
    return 0


def _pull(args: argparse.Namespace) -> int:
    from ..hub import registry
    from ..hub.info import short_size
    from ..hub.pull import pull

    entry = registry.lookup(args.name)
    result = pull(entry, progressbar=bool(args.progress) and sys.stderr.isatty(),
                  force=args.force)
    if result.status == "bundled":
        _out(f"{entry.name} is bundled with notochord-rt: {result.path}")
        return 0
    r = result.record
    if result.status == "cached":
        _out(f"{entry.name} is already cached: {result.path} (--force downloads it again)")
        return 0
    converted = " and converted to safetensors" if r.get("converted_from_reference") else ""
    _out(f"pulled {entry.name} ({short_size(r.get('bytes'))} in {r.get('seconds')} s, "
         f"{r.get('parameters'):,} parameters){converted}: {result.path}\n"
         f"sha256 {r.get('sha256')} ({r.get('verified')})\n"
         f"use it: notochord-rt generate --checkpoint {entry.name} --out piece.mid")
    return 0


def _resolve_path(spec: str):
    """A checkpoint file for ``models info PATH`` (run and checkpoint folders included)."""
    from pathlib import Path

    from ..train.checkpoints import resolve_checkpoint
    from ..train.sources import model_path

    p = Path(spec)
    if not p.exists():
        raise UserError(f"{spec}: no such file, and no model of that name in the registry "
                        "(`notochord-rt models list`)")
    return model_path(resolve_checkpoint(p)) if p.is_dir() else p


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import CheckpointError
    from ..hub import registry
    from ..hub.info import checkpoint_info, entry_info, short_count, short_size

    entry = None if Path(args.model).exists() else registry.find(args.model)
    try:
        info = entry_info(entry) if entry else checkpoint_info(_resolve_path(args.model))
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if args.json:
        _out(json.dumps(info, indent=1))
        return 0
    lines = []
    if entry is not None:
        file = info.get("file", {})
        lines += [f"{entry.name}: {entry.title}"]
        if entry.aliases:
            lines.append(f"aliases        {', '.join(entry.aliases)}")
        state = ("bundled" if entry.is_bundled else "cached" if info["cached"] else
                 f"not downloaded (`notochord-rt models pull {entry.name}`)")
        lines += [f"status         {state}" + (f": {info['path']}" if info["path"] else ""),
                  f"architecture   {file.get('architecture', '(read from the file once pulled)')}",
                  "parameters     " + (f"{info['parameters']:,}" if info["parameters"] else
                                       "? (known once pulled)"),
                  f"size           {short_size(file.get('bytes') or info['size_bytes'])}",
                  f"training data  {entry.training_data or '?'}",
                  f"licence        {entry.licence or '?'}",
                  f"source         {info['source']}"]
        pull = info.get("pull")
        if pull:
            lines.append(f"pulled         {pull.get('pulled_at')}, sha256 {pull.get('sha256')} "
                         f"({pull.get('verified')})")
        elif not entry.is_bundled:
            lines.append("checksum       " + (f"published: {entry.sha256}" if entry.sha256 else
                                              "none published (the first download's is "
                                              "recorded)"))
        if entry.card:
            lines += ["", "model card", *entry.card.strip("\n").splitlines()]
    else:
        lines += [f"{info['path']}",
                  f"format         {info['format']}",
                  f"architecture   {info['architecture']}",
                  f"parameters     {info['parameters']:,} ({short_count(info['parameters'])})",
                  f"size           {short_size(info['bytes'])}"]
        for k, v in sorted(info["metadata"].items()):
            lines.append(f"{k:15}{v}")
    _out("\n".join(lines))
    return 0


def _path(args: argparse.Namespace) -> int:
    from ..hub import cache, registry
    from ..hub.resolve import not_cached_message

    entry = registry.lookup(args.name)
    path = cache.cached_model(entry)
    if path is None:
        raise UserError(not_cached_message(entry, args.name))
    _out(str(path))
    return 0


def _remove(args: argparse.Namespace) -> int:
    from ..hub import cache, registry

    entry = registry.lookup(args.name)
    existed = cache.remove(entry, forget=args.forget)
    _out(f"removed {entry.name} from {cache.home()}" if existed else
         f"{entry.name} was not in the cache ({cache.home()})")
    return 0


def run(args: argparse.Namespace) -> int:
    actions = {"list": _list, "pull": _pull, "info": _info, "path": _path, "remove": _remove}
    if not getattr(args, "action", None):
        raise UserError("say what to do: list, pull NAME, info NAME|PATH, path NAME or "
                        "remove NAME (notochord-rt models --help)")
    return actions[args.action](args)
