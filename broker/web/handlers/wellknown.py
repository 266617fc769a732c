"""Discovery for resource servers and OAuth clients: the JWKS and RFC 8414 metadata.

Both answer without authentication. The metadata document is served, unchanged, at the
RFC 8414 path and at the OpenID Connect discovery path (for clients that only look there);
the broker is an OAuth authorization server, not an OpenID provider: it issues no ID tokens.
"""

from __future__ import annotations

from aiohttp import web

from broker.errors import NotFound
from broker.web.handlers.oauth import TOKEN_EXCHANGE
from broker.web.keys import DISCOVERY
from broker.web.problem import json_response

__all__ = [
    "CLIENT_AUTH_METHODS",
    "JWT_SVID_BEARER",
    "jwks",
    "metadata",
    "openid_configuration",
]

# How agents authenticate, by the names of the IANA "OAuth Token Endpoint Authentication
# Methods" registry where one exists. An X.509-SVID over mTLS is RFC 8705 section 2.1 PKI
# client authentication. A JWT-SVID in `Authorization: Bearer` has no registered name:
# draft-ietf-oauth-spiffe-client-auth registers only a client assertion type (the JWT-SVID
# sent RFC 7523-style as `client_assertion`, which this broker does not take), so it gets
# an absolute URI, which RFC 7591 section 2 allows without registration.
JWT_SVID_BEARER = "urn:credential-broker:client-auth:jwt-svid-bearer"
CLIENT_AUTH_METHODS = ("tls_client_auth", JWT_SVID_BEARER)


async def jwks(request: web.Request) -> web.Response:
    """Public keys of the JWT issuer: current, upcoming and recently retired."""
    jwks = request.app[DISCOVERY].jwks()
    if jwks is None:
        raise NotFound("this broker has no JWT issuer configured")
    response = json_response(dict(jwks), no_store=False)
    response.headers["Cache-Control"] = "public, max-age=60"
    return response


async def metadata(request: web.Request) -> web.Response:
    """RFC 8414 authorization server metadata (the same document at both well-known paths)."""
    discovery = request.app[DISCOVERY]
    issuer = discovery.issuer
    body: dict[str, object] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/v1/token",
        "introspection_endpoint": f"{issuer}/v1/introspect",
        "revocation_endpoint": f"{issuer}/v1/revoke",
        "grant_types_supported": [TOKEN_EXCHANGE],
        # REQUIRED by RFC 8414, though there is no authorization endpoint (and so no
        # `authorization_endpoint`, no PKCE methods). "none" (OAuth 2.0 Multiple Response
        # Type Encoding Practices, IANA-registered) is the response type that returns
        # nothing: the one value that is true here. `code` or `token` would be false.
        "response_types_supported": ["none"],
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "tls_client_certificate_bound_access_tokens": True,  # RFC 8705 section 3.3
    }
    if discovery.jwks() is not None:
        body["jwks_uri"] = f"{issuer}/.well-known/jwks.json"
        body["access_token_signing_alg_values_supported"] = list(discovery.algorithms)
    response = json_response(body, no_store=False)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# The OpenID Connect discovery path serves the same document (contract section 3).
openid_configuration = metadata
