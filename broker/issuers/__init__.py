"""Issuers: JWTs the broker signs, and Vault secrets."""
