"""Controllers: the global allocator (rounds) and per-node local controllers (fast windows)."""
