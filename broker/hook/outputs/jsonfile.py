"""`--format json`: one JSON file, `{"credentials": {"<tool>": {<credential>, "decision_id"}}}`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from broker.fileio import write_atomic
from broker.hook.model import Credential

__all__ = ["JsonFile"]


class JsonFile:
    """All credentials in one document, rewritten whole on every change."""

    def __init__(self, path: Path) -> None:
        """Write to `path`."""
        self._path = path

    def write(self, held: Mapping[str, Credential]) -> None:
        """Replace the file's content with these credentials."""
        document = {"credentials": {tool: held[tool].file_document() for tool in sorted(held)}}
        write_atomic(self._path, json.dumps(document, indent=2).encode())
