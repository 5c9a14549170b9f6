"""proto: the one source of truth for the segment layout and the control messages."""
