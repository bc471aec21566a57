"""The reproducible training-corpus recipe (``notochord-rt corpus``): sources and screening."""
