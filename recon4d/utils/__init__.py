"""Small shared helpers: atomic writes, progress output, safe checkpoints."""
