"""HashiCorp Vault (or OpenBao): the authenticated client, its circuit breaker, the reconciler."""
