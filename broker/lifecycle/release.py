"""Releasing a credential at its issuer (a Vault lease), shared by every undo path."""

from __future__ import annotations

import contextlib

from broker.errors import BrokerError
from broker.typing import Issuer, StateStore

__all__ = ["release_at_issuer"]


async def release_at_issuer(issuer: Issuer | None, state: StateStore, credential_id: str) -> bool:
    """Revoke a credential at its issuer (a Vault lease) and mark its lease released.

    Returns:
        False if the issuer could not be reached (the reconciler retries later).
    """
    if issuer is None:
        return True
    try:
        await issuer.revoke(credential_id)
    except BrokerError:
        return False
    with contextlib.suppress(BrokerError):
        await state.lease_released(credential_id)
    return True
