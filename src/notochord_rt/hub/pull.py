"""``pull``: download a registry model into the cache, check it, convert it once.

Only :func:`pull` ever touches the network, and only when a user asked for it
(``notochord-rt models pull``, or ``--download``). The download is pooch's: streamed into
a temporary file, checked against the checksum when one is known, then moved into place.
The checksum is the registry's ``sha256`` when published; otherwise the checksum of the
model's first download, recorded in the cache (and the record says it was unverified).

The downloaded file is then read like any untrusted checkpoint (:mod:`..model.checkpoint`):
a reference pickle with ``torch.load(weights_only=True)`` plus an allow-list, so a pickle
that would run code is refused before anything in it is built; its hyper-parameters and
tensors are checked, and it is converted to our safetensors format. The original is
deleted: later loads read only the safetensors file.

Every failure (offline, DNS, HTTP status, a connection closed mid-file, a checksum
mismatch, a file that is not a checkpoint, a refused pickle, a full disk, another process
pulling the same model) is a :class:`~.cache.HubError` with one line saying what went
wrong, and leaves nothing in the cache but what was there before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..atomic import replace_durably
from ..errors import CheckpointError
from . import cache
from .cache import HubError
from .registry import ModelEntry

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass
class PullResult:
    """What :func:`pull` did: ``status`` is ``bundled``, ``cached`` (already there) or
    ``pulled``; ``record`` is the cache's ``pull.json`` of the model."""

    name: str
    path: Path
    status: str
    record: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_pooch():
    """pooch logs every download on its own stderr handler; keep it to warnings."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def explain_download_error(e: BaseException, entry: ModelEntry) -> str:
    """One line for a failed download (requests' and pooch's exceptions)."""
    import requests

    url, host = str(entry.url), _host(str(entry.url))
    text = " ".join(str(e).split())
    if isinstance(e, requests.exceptions.HTTPError):
        r = e.response
        status = f"HTTP {r.status_code} {r.reason or ''}".strip() if r is not None else text
        return f"the server answered {status} for {url}"
    if isinstance(e, requests.exceptions.SSLError):
        return f"the secure connection to {host} failed ({text[:200]})"
    if isinstance(e, requests.exceptions.Timeout):
        return f"{host} did not answer in time (offline, or the server is too slow)"
    if isinstance(e, requests.exceptions.ConnectionError):
        low = text.lower()
        if any(s in low for s in ("name or service not known", "failed to resolve",
                                  "nodename nor servname", "temporary failure in name",
                                  "no address associated", "getaddrinfo failed")):
            return f"cannot find {host} (DNS lookup failed): is this machine offline?"
        if "refused" in low:
            return f"{host} refused the connection (offline, or no server there)"
        if any(s in low for s in ("incompleteread", "connection broken", "prematurely",
                                  "reset by peer", "remote end closed", "remotedisconnected")):
            return (f"the connection to {host} broke off during the download; nothing was "
                    "kept, run the pull again")
        return f"cannot connect to {host}: {text[:200]}"
    broken = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
    if isinstance(e, broken):
        return (f"the download from {host} broke off before the end of the file; nothing "
                "was kept, run the pull again")
    if isinstance(e, requests.exceptions.RequestException):
        return f"the download from {host} failed: {text[:200]}"
    return f"the download from {host} failed: {text[:200]}"


def _space_message(entry: ModelEntry, e: OSError | None = None) -> str:
    free = cache.disk_free(cache.home())
    have = f" ({_mb(free)} free)" if free is not None else ""
    need = f"; it needs about {_mb(2.2 * entry.size_bytes)}" if entry.size_bytes else ""
    return (f"not enough disk space in {cache.home()}{have} to pull {entry.name!r}{need}; "
            f"nothing was kept (set {cache.HOME_ENV} to a folder on a larger disk)")


def _sniff(path: Path) -> str:
    """``safetensors``, ``torch`` or ``other`` from the first bytes of a file."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte header length may well start with 0x80 (a pickle's
    # first byte), so it is recognised by the "{" after a length that fits the file
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= path.stat().st_size - 8:
            return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "other"


def _convert(entry: ModelEntry, downloaded: Path, out: Path, sha256: str) -> dict[str, Any]:
    """Check ``downloaded`` and write it to ``out`` in our format; returns what it is."""
    from ..model import checkpoint as ck
    from ..model.network import NotochordNet

    kind = _sniff(downloaded)
    if kind == "other":
        raise CheckpointError(f"{downloaded.name} is neither a safetensors file nor a torch "
                              "checkpoint (an error page? a truncated file?)")
    if kind == "torch":
        config, state = ck.read_reference(downloaded)
        model = ck.build_model(NotochordNet, config, state, str(downloaded))
        ck.save_model(model, out, source=f"converted by notochord-rt from {entry.url}",
                      registry_name=entry.name, download_sha256=sha256)
        converted = True
    else:
        ck.read_checked(downloaded)
        os.replace(downloaded, out)
        converted = False
    from .info import count_parameters

    config, _ = ck.read_checked(out)  # what later loads will read, checked once more
    return {"converted_from_reference": converted, "parameters": count_parameters(config),
            "config": config.to_dict()}


def _download(entry: ModelEntry, partial: Path, known: str | None, progressbar: Any,
              timeout: tuple[float, float]) -> Path:
    import pooch

    downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=timeout)
    with _quiet_pooch():
        return Path(pooch.retrieve(str(entry.url), known_hash=f"sha256:{known}" if known else None,
                                   fname=entry.file_name, path=str(partial),
                                   downloader=downloader))


def _mismatch_message(entry: ModelEntry, e: ValueError, published: bool) -> str:
    got = re.findall(r"got (?:sha256:)?([0-9a-f]{64})", str(e))
    got_text = f"sha256 {got[0][:16]}..." if got else "another checksum"
    if published:
        return (f"checksum mismatch: the download of {entry.name!r} has {got_text}, the "
                f"registry says {entry.sha256[:16]}...; it was deleted (a corrupted or "
                "tampered download)")
    return (f"checksum mismatch: the download of {entry.name!r} has {got_text}, but its "
            f"first download had {str(cache.known_hash(str(entry.url)))[:16]}...; it was "
            "deleted. The file on the server changed or was tampered with; if you trust the "
            f"change, run `notochord-rt models remove {entry.name} --forget`, then pull again")


def pull(entry: ModelEntry, *, progressbar: Any = False, force: bool = False,
         timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT)) -> PullResult:
    """Download, check and convert ``entry`` into the cache (see the module docstring).

    Returns at once for a bundled model or one already cached (unless ``force``).
    ``progressbar`` is passed to pooch (True for a tqdm bar on stderr).
    """
    if entry.is_bundled:
        path = cache.cached_model(entry)
        if path is None:
            raise HubError(f"the bundled model {entry.name!r} is missing from this "
                           "installation (reinstall notochord-rt)")
        return PullResult(entry.name, path, "bundled")
    with cache.model_lock(entry.name, "pull"):
        existing = cache.cached_model(entry)
        if existing is not None and not force:
            return PullResult(entry.name, existing, "cached", cache.read_record(entry.name))
        cache.sweep(entry.name)
        folder = cache.model_dir(entry.name)
        partial = folder / cache.PARTIAL
        published = entry.sha256.lower() or None
        first = None if published else cache.known_hash(str(entry.url))
        free = cache.disk_free(cache.home())
        if entry.size_bytes and free is not None and free < 2.2 * entry.size_bytes:
            raise HubError(_space_message(entry))
        try:
            partial.mkdir(parents=True, exist_ok=True)
            started = time.time()
            try:
                downloaded = _download(entry, partial, published or first, progressbar, timeout)
            except ValueError as e:
                if "does not match the known hash" in str(e):
                    raise HubError(_mismatch_message(entry, e, bool(published))) from None
                raise HubError(explain_download_error(e, entry)) from None
            except OSError as e:
                if e.errno in _SPACE_ERRNOS:
                    raise HubError(_space_message(entry, e)) from None
                raise HubError(explain_download_error(e, entry)) from None
            except Exception as e:  # requests' exceptions
                import requests

                if isinstance(e, requests.exceptions.RequestException):
                    raise HubError(explain_download_error(e, entry)) from None
                raise
            import pooch

            sha256 = pooch.file_hash(str(downloaded), alg="sha256")
            size = downloaded.stat().st_size
            try:
                info = _convert(entry, downloaded, partial / cache.MODEL_FILE, sha256)
            except CheckpointError as e:
                raise HubError(f"the download of {entry.name!r} from {_host(str(entry.url))} "
                               f"is not a usable checkpoint, so nothing was kept: "
                               f"{str(e).replace(str(downloaded), downloaded.name)}") from None
            replace_durably(partial / cache.MODEL_FILE, folder / cache.MODEL_FILE)
            record = {"name": entry.name, "url": entry.url, "file": entry.file_name,
                      "sha256": sha256, "bytes": size, "pulled_at": time.strftime(
                          "%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                      "seconds": round(time.time() - started, 2),
                      "verified": ("published checksum" if published else
                                   "first download's checksum" if first else
                                   "unverified (no checksum published; this first download's "
                                   "checksum is now recorded)"),
                      **info}
            cache.write_json_atomic(folder / cache.RECORD_FILE, record)
            if not published and not first:
                cache.remember_hash(str(entry.url), sha256)
        except OSError as e:
            if e.errno in _SPACE_ERRNOS:
                raise HubError(_space_message(entry, e)) from None
            raise HubError(f"cannot write the model cache {folder}: {e.strerror or e}") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            with contextlib.suppress(OSError):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
    log.info("pulled %s into %s", entry.name, folder)
    return PullResult(entry.name, folder / cache.MODEL_FILE, "pulled", record)
