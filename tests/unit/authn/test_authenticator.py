"""Authenticator rules that need no server: XFCC parsing and bearer syntax."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from broker.authn import create_authenticator
from broker.authn.authenticator import Presented, parse_xfcc
from broker.clock import SystemClock
from broker.errors import Unauthenticated
from broker.identity.files import FilesIdentitySource
from tests.support.broker import Identity


def test_xfcc_parses_envoy_elements_and_quotes() -> None:
    """Elements split on commas, pairs on semicolons, quoted values keep separators."""
    pem = quote("-----BEGIN CERTIFICATE-----\nAB,C;D=\n-----END CERTIFICATE-----\n")
    header = (
        f'By=spiffe://a/b;Hash=12;URI=spiffe://a/c,By=spiffe://a/p;Cert="{pem}";Subject="CN=x,O=y"'
    )
    elements = parse_xfcc(header)
    assert len(elements) == 2
    assert elements[0] == {"by": "spiffe://a/b", "hash": "12", "uri": "spiffe://a/c"}
    assert elements[1]["cert"] == pem
    assert elements[1]["subject"] == "CN=x,O=y"


def test_xfcc_unterminated_quote_is_malformed() -> None:
    """An unterminated quoted value yields no elements (refused by the caller)."""
    assert parse_xfcc('Cert="abc') == []


async def test_presented_nothing_is_not_an_audited_identity(identity: Identity) -> None:
    """No identity at all is a 401 with presented=False: only presented ones are audited."""
    source = FilesIdentitySource(identity.settings(), SystemClock())
    await source.start()
    authenticator = create_authenticator(identity.settings(), source, SystemClock())
    with pytest.raises(Unauthenticated) as excinfo:
        authenticator.authenticate(Presented())
    assert excinfo.value.presented is False
    with pytest.raises(Unauthenticated) as excinfo:
        authenticator.authenticate(Presented(authorization="Bearer not.a.jwt"))
    assert excinfo.value.presented is True
    await source.close()
