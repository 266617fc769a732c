"""A SPIFFE workload-identity credential broker for AI agents.

The data flow is the architecture: a request is authenticated (`authn`), its delegation
context built (`context`), the policy decides (`policy`), issuers issue (`issuers`), the
audit trail records (`audit`) and the web layer responds (`web`). `pipeline` is the one
function that strings these steps together.
"""

__version__ = "0.1.0"
