"""Hop-by-hop headers: the fixed list and whatever `Connection` names are never forwarded."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from broker.gateway.proxy import _hop_by_hop


def test_connection_named_headers_are_hop_by_hop() -> None:
    """`Connection: keep-alive, X-Hop` makes X-Hop hop-by-hop, beside the fixed ones."""
    headers = CIMultiDictProxy(
        CIMultiDict([("Connection", "keep-alive, X-Hop"), ("Connection", "x-other")])
    )
    drop = _hop_by_hop(headers)
    assert {"x-hop", "x-other", "keep-alive", "transfer-encoding", "upgrade", "te"} <= drop
    assert "content-type" not in drop
