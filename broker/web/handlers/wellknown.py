"""Discovery for resource servers: the issuer's JWKS and its metadata (no authentication)."""

from __future__ import annotations

from aiohttp import web

from broker.errors import NotFound
from broker.web.keys import DISCOVERY
from broker.web.problem import json_response

__all__ = ["jwks", "openid_configuration"]


async def jwks(request: web.Request) -> web.Response:
    """Public keys of the JWT issuer: current, upcoming and recently retired."""
    jwks = request.app[DISCOVERY].jwks()
    if jwks is None:
        raise NotFound("this broker has no JWT issuer configured")
    response = json_response(dict(jwks), no_store=False)
    response.headers["Cache-Control"] = "public, max-age=60"
    return response


async def openid_configuration(request: web.Request) -> web.Response:
    """Authorization server metadata (RFC 8414 fields, served at the OIDC discovery path)."""
    discovery = request.app[DISCOVERY]
    issuer = discovery.issuer
    body = {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "token_endpoint": f"{issuer}/v1/token",
        "introspection_endpoint": f"{issuer}/v1/introspect",
        "revocation_endpoint": f"{issuer}/v1/revoke",
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "token_endpoint_auth_methods_supported": ["tls_client_auth", "spiffe_jwt_svid"],
        "introspection_endpoint_auth_methods_supported": ["tls_client_auth", "spiffe_jwt_svid"],
        "revocation_endpoint_auth_methods_supported": ["tls_client_auth", "spiffe_jwt_svid"],
        "tls_client_certificate_bound_access_tokens": True,
        "access_token_signing_alg_values_supported": list(discovery.algorithms),
        "response_types_supported": [],
    }
    response = json_response(body, no_store=False)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
