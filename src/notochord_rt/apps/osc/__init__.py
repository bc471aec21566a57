"""The OSC server of ``notochord-rt serve``: wire format, protocol, sessions."""
