"""midi layer."""
