"""Models by name: the registry, the cache, pulling and name resolution.

* ``registry.py``: the registry data file (``assets/models.toml``, plus
  ``$NOTOCHORD_RT_REGISTRY``): names, aliases, URLs, checksums, licences, model cards;
* ``cache.py``: the cache folder (``$NOTOCHORD_RT_HOME`` or the user's cache dir), what a
  pull recorded, locks;
* ``pull.py``: the only code that downloads (pooch), checks and converts a model;
* ``resolve.py``: ``resolve_checkpoint(spec)``, used by every loader and ``--checkpoint``;
* ``info.py``: architecture and parameter count of a checkpoint, without building it.

Layer: above ``model/`` (it converts checkpoints with :mod:`notochord_rt.model.checkpoint`),
below ``engine/``, ``train/`` and the apps, which resolve names through it.
"""

from .cache import HubError
from .resolve import NotCached, resolve_checkpoint

__all__ = ["HubError", "NotCached", "resolve_checkpoint"]
