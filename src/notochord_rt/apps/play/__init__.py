"""``notochord-rt play``: voices, presets, the policy and the terminal UI."""
