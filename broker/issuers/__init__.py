"""Issuers: JWTs the broker signs (`jwt`), and Vault or OpenBao secrets (`vault`).

To add an issuer kind: a sibling package with a `config.py` (its section and its per-tool
keys), the issuer (implementing `broker.typing.Issuer`, backend errors raised as
`Unavailable`), and a `FACTORY` (`broker.issuers.base.IssuerFactory`) registered below;
then add it to the contract suite in `tests/contracts/test_issuer.py`. As for state stores,
the factory's module imports only the configuration; the issuer and its client library
are imported in `open`.
"""

from __future__ import annotations

from broker.issuers import jwt, vault
from broker.issuers.base import IssuerFactory
from broker.registry import Registry

__all__ = ["ISSUERS"]

ISSUERS: Registry[IssuerFactory] = Registry("issuer")
ISSUERS.register(jwt.FACTORY)
ISSUERS.register(vault.FACTORY)
