"""Delegation context: the end user on whose behalf an agent acts (RFC 8693)."""
