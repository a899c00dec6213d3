"""Small shared utilities (atomic file writes, seeding, device helpers)."""
