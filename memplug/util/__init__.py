"""Small utilities shared by every layer: atomic file writes and a byte-bounded tensor cache."""
