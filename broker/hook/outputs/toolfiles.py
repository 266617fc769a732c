"""`--format files` (the default): `<out>/<tool>.json`, the credential object plus `decision_id`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from broker.fileio import write_atomic
from broker.hook.model import Credential

__all__ = ["ToolFiles"]


class ToolFiles:
    """One file per tool; a tool without a credential has no file."""

    def __init__(self, directory: Path, tools: Sequence[str]) -> None:
        """Write into `directory` for these tools."""
        self._directory = directory
        self._tools = tuple(tools)

    def write(self, held: Mapping[str, Credential]) -> None:
        """Write each held credential, remove the files of the others."""
        for tool in self._tools:
            path = self._directory / f"{tool}.json"
            credential = held.get(tool)
            if credential is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, json.dumps(credential.file_document(), indent=2).encode())
