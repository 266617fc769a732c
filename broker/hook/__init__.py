"""`broker-hook`: the agent-side init container / sidecar (contract section 6)."""
