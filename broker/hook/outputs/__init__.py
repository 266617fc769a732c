"""Where credentials go: per-tool files, an env file, one JSON file, a user template.

Every output lives in the `--out` directory (mode 0700) and is written atomically
(temporary file, mode 0600 from the start, fsync, rename), so a reader sees the old or the
new content, never a mix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from broker.fileio import ensure_private_dir
from broker.hook.errors import EXIT_OUTPUT, HookError
from broker.hook.model import Credential
from broker.hook.outputs.envfile import EnvFile
from broker.hook.outputs.jsonfile import JsonFile
from broker.hook.outputs.template import TemplateFile
from broker.hook.outputs.toolfiles import ToolFiles
from broker.hook.typing import Output

__all__ = ["EnvFile", "JsonFile", "Outputs", "TemplateFile", "ToolFiles"]


class Outputs:
    """All configured outputs, written together."""

    def __init__(self, directory: Path, outputs: Sequence[Output]) -> None:
        """Write these outputs into `directory`."""
        self._directory = directory
        self._outputs = tuple(outputs)

    def write(self, held: Mapping[str, Credential]) -> None:
        """Make every output hold exactly `held`.

        Raises:
            HookError: The directory or a file cannot be written (exit 7).
        """
        try:
            ensure_private_dir(self._directory)
            for output in self._outputs:
                output.write(held)
        except OSError as exc:
            raise HookError(
                EXIT_OUTPUT, f"cannot write to {self._directory}: {exc.strerror}"
            ) from None
