"""The real-time player, MIDI ports and the live MIDI apps (harmonize --live, improvise)."""
