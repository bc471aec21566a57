"""``python -m notochord_rt`` runs the command-line interface."""

from .cli import main

raise SystemExit(main())
