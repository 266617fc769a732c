"""The hook's side of the conversation: HTTPS to the broker as the pod's workload.

The broker is authenticated like any SPIFFE peer: its certificate chain must verify
against our trust bundle, and its SPIFFE ID must be the expected broker ID (hostnames
play no part).
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode, urlsplit

from cryptography import x509

from broker.hook.errors import EXIT_UNREACHABLE, EXIT_USAGE, HookError
from broker.hook.identity.tls import spiffe_id_of
from broker.hook.model import BrokerResponse
from broker.hook.settings import AuthMode
from broker.hook.typing import Identity

__all__ = ["BrokerClient", "default_broker_id"]

MAX_RESPONSE_BYTES = 1024 * 1024


class BrokerClient:
    """A `Broker` over HTTPS, authenticated with the pod's SVID."""

    def __init__(
        self, url: str, broker_id: str, identity: Identity, *, auth: AuthMode, timeout: float
    ) -> None:
        """Create the client.

        Args:
            url: `https://host:port` of the broker.
            broker_id: The SPIFFE ID the broker must present.
            identity: The pod's identity.
            auth: `x509` (mTLS) or `jwt` (a JWT-SVID bearer over TLS).
            timeout: Socket timeout per request.

        Raises:
            HookError: `url` is not an https URL (exit 2).
        """
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise HookError(EXIT_USAGE, f"--broker-url must be an https:// URL, not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._broker_id = broker_id
        self._identity = identity
        self._auth = auth
        self._timeout = timeout

    def post_json(self, path: str, body: Mapping[str, object]) -> BrokerResponse:
        """POST a JSON body."""
        return self._post(path, json.dumps(body).encode(), "application/json")

    def post_form(self, path: str, form: Mapping[str, str]) -> BrokerResponse:
        """POST a form-encoded body (the OAuth endpoints)."""
        return self._post(path, urlencode(form).encode(), "application/x-www-form-urlencoded")

    def _post(self, path: str, payload: bytes, content_type: str) -> BrokerResponse:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self._auth is AuthMode.JWT:
            headers["Authorization"] = f"Bearer {self._identity.jwt_svid(self._broker_id)}"
        context = self._identity.tls_context(present_svid=self._auth is AuthMode.X509)
        connection = http.client.HTTPSConnection(
            self._host, self._port, context=context, timeout=self._timeout
        )
        try:
            connection.connect()
            self._check_server(connection)
            connection.request("POST", path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read(MAX_RESPONSE_BYTES)
            retry = response.getheader("Retry-After")
            date = response.getheader("Date")
        except (OSError, http.client.HTTPException) as exc:
            raise HookError(EXIT_UNREACHABLE, f"broker unreachable: {exc}") from None
        finally:
            connection.close()
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        return BrokerResponse(
            response.status,
            decoded,
            float(retry) if retry and retry.isdigit() else None,
            _http_date(date),
        )

    def _check_server(self, connection: http.client.HTTPSConnection) -> None:
        sock = connection.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        server_id = spiffe_id_of(x509.load_der_x509_certificate(der)) if der else None
        if server_id != self._broker_id:
            raise HookError(
                EXIT_UNREACHABLE,
                f"the server at {self._host}:{self._port} is "
                f"{server_id or 'not a SPIFFE workload'}, "
                f"not the broker {self._broker_id}",
            )


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def default_broker_id(own_id: str) -> str:
    """`spiffe://<our trust domain>/broker` (the development layout's broker ID)."""
    trust_domain = own_id.removeprefix("spiffe://").split("/", 1)[0]
    return f"spiffe://{trust_domain}/broker"
