"""Training stage: weighted continual training (not implemented yet: see issue 4)."""
