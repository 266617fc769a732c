"""Hop-by-hop headers: the fixed list and whatever `Connection` names are never forwarded."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from broker.gateway.proxy import HOP_BY_HOP, _hop_by_hop


def test_connection_named_headers_are_hop_by_hop() -> None:
    """`Connection: keep-alive, X-Hop` makes X-Hop hop-by-hop, beside the fixed ones."""
    headers = CIMultiDictProxy(
        CIMultiDict([("Connection", "keep-alive, X-Hop"), ("Connection", "x-other")])
    )
    drop = _hop_by_hop(headers)
    assert {"x-hop", "x-other", "keep-alive", "transfer-encoding", "upgrade", "te"} <= drop
    assert "content-type" not in drop


def test_without_connection_only_the_given_names_are_dropped() -> None:
    """No `Connection` header: the fixed set itself (no per-request set built)."""
    headers = CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json")]))
    assert _hop_by_hop(headers) is HOP_BY_HOP
    extra = HOP_BY_HOP | {"authorization"}
    assert _hop_by_hop(headers, extra) is extra
    named = CIMultiDictProxy(CIMultiDict([("connection", "X-Hop")]))
    assert _hop_by_hop(named, extra) == extra | {"x-hop"}
