"""Tools of `type: jwt`: RFC 9068 access tokens the broker signs itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broker.config.reader import Reader
from broker.errors import ConfigError
from broker.issuers.base import IssuerDeps, IssuerParts, ToolOptions
from broker.issuers.jwt.config import JwtIssuerSettings, parse_jwt_issuer, parse_jwt_tool
from broker.issuers.jwt.issuer import JwtIssuer
from broker.issuers.jwt.keys import KeyRing

__all__ = ["FACTORY", "JwtIssuer", "KeyRing"]


class _Factory:
    kind = "jwt"
    section = "jwt_issuer"

    def parse(self, reader: Reader) -> JwtIssuerSettings:
        return parse_jwt_issuer(reader)

    def parse_tool(self, reader: Reader) -> ToolOptions:
        return ToolOptions(audience=parse_jwt_tool(reader))

    @asynccontextmanager
    async def open(self, deps: IssuerDeps, settings: object) -> AsyncIterator[IssuerParts]:
        assert isinstance(settings, JwtIssuerSettings)
        if deps.settings.workers > 1 and settings.keys_file is None:
            # An in-memory key per process: each worker would publish a different JWKS.
            raise ConfigError("jwt_issuer.keys_file is required with --workers above 1")
        keys = KeyRing(settings, deps.clock)
        keys.load()
        await keys.start()
        try:
            issuer = JwtIssuer(settings.issuer or deps.settings.default_issuer, keys, deps.clock)
            yield IssuerParts(issuer, token_verifier=issuer, exchangeable=True, signer=issuer.sign)
        finally:
            await keys.close()


FACTORY = _Factory()
