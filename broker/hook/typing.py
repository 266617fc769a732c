"""The hook's extension points, one Protocol each: where the SVID comes from, where credentials go.

Implementations: `broker.hook.identity.{workload_api,files}` and
`broker.hook.outputs.{toolfiles,envfile,jsonfile,template}`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Protocol

from broker.hook.model import BrokerResponse, Credential

__all__ = ["Broker", "Identity", "Output"]


class Identity(Protocol):
    """The pod's SPIFFE identity: an X.509-SVID, its trust bundle, JWT-SVIDs."""

    @property
    def spiffe_id(self) -> str:
        """The pod's SPIFFE ID.

        Raises:
            HookError: No SVID (exit 3).
        """
        ...

    def tls_context(self, *, present_svid: bool) -> ssl.SSLContext:
        """A TLS client context trusting our trust domain's bundle.

        Args:
            present_svid: Also present our X.509-SVID as the client certificate (mTLS).

        Raises:
            HookError: No SVID or bundle (exit 3).
        """
        ...

    def jwt_svid(self, audience: str) -> str:
        """A JWT-SVID of the pod for `audience`.

        Raises:
            HookError: None available (exit 3).
        """
        ...

    def close(self) -> None:
        """Release what the source holds (streams, threads)."""
        ...


class Output(Protocol):
    """One output format: renders the whole set of held credentials, atomically, mode 0600."""

    def write(self, held: Mapping[str, Credential]) -> None:
        """Replace what this output holds with `held` (tool -> credential).

        A tool missing from `held` must disappear from the output.

        Raises:
            OSError: The file cannot be written.
        """
        ...


class Broker(Protocol):
    """The broker's HTTP API as the hook uses it."""

    def post_json(self, path: str, body: Mapping[str, object]) -> BrokerResponse:
        """POST a JSON body.

        Raises:
            HookError: Unreachable, or not the expected broker (exit 4).
        """
        ...

    def post_form(self, path: str, form: Mapping[str, str]) -> BrokerResponse:
        """POST a form-encoded body (the OAuth endpoints).

        Raises:
            HookError: Unreachable, or not the expected broker (exit 4).
        """
        ...
