"""A typed reader over parsed YAML that names the file and key in every error.

Every value is read through one `Reader`, which records the keys it was asked for so that
`finish()` can reject keys nobody asked for: a typo such as `trust_doman` must fail at
start-up, not silently fall back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

import yaml

from broker.errors import ConfigError
from broker.spiffe_id import parse_spiffe_id, parse_trust_domain

__all__ = ["Reader", "load_yaml_mapping"]

T = TypeVar("T")


class _Missing:
    __slots__ = ()


MISSING: Final = _Missing()
# libyaml's safe loader when PyYAML was built with it (its wheels are): a policy of 10,000
# agents loads in about a second instead of half a minute.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_mapping(path: Path, *, what: str) -> tuple[dict[str, object], bytes]:
    """Read a YAML file whose top level must be a mapping.

    Args:
        path: The file.
        what: What the file is, for messages ("configuration", "policy").

    Returns:
        The parsed mapping and the raw bytes (for content hashes).

    Raises:
        ConfigError: The file is missing, unreadable, not YAML or not a mapping.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {exc.strerror}") from None
    try:
        data = yaml.load(raw, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader, C or Python
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: {what} file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping at the top level")
    return {str(k): v for k, v in data.items()}, raw


class Reader:
    """Reads typed values out of one YAML mapping, with messages naming file and key."""

    __slots__ = ("_data", "_file", "_prefix", "_seen")

    def __init__(self, file: Path, data: Mapping[str, object], prefix: str = "") -> None:
        """Wrap a mapping.

        Args:
            file: The file the mapping came from (named in errors).
            data: The mapping.
            prefix: Dotted key path of this mapping inside the file.
        """
        self._file = file
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    @property
    def file(self) -> Path:
        """The file being read."""
        return self._file

    def key(self, name: str) -> str:
        """Return the dotted path of `name` for messages."""
        return f"{self._prefix}.{name}" if self._prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        """Build an error naming the file and the key."""
        return ConfigError(f"{self._file}: {self.key(name)}: {message}")

    def has(self, name: str) -> bool:
        """Whether `name` is present (and not null); asking makes it a known key."""
        self._seen.add(name)
        return self._data.get(name) is not None

    def names(self) -> list[str]:
        """All keys of the mapping (marks them as seen)."""
        names = [str(k) for k in self._data]
        self._seen.update(names)
        return names

    def _get(self, name: str, default: object) -> object:
        self._seen.add(name)
        value = self._data.get(name)
        if value is None:
            if default is MISSING:
                raise self.error(name, "is required")
            return default
        return value

    def section(self, name: str, *, required: bool = False) -> Reader:
        """Return a reader over the mapping at `name` (empty if absent and optional)."""
        value = self._get(name, MISSING if required else {})
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a mapping")
        return Reader(self._file, {str(k): v for k, v in value.items()}, self.key(name))

    def sections(self, name: str) -> list[Reader]:
        """Return readers over a list of mappings at `name` (empty if absent)."""
        value = self._get(name, [])
        if not isinstance(value, list):
            raise self.error(name, "must be a list")
        out: list[Reader] = []
        for index, item in enumerate(value):
            key = f"{name}[{index}]"
            if not isinstance(item, Mapping):
                raise self.error(key, "must be a mapping")
            out.append(Reader(self._file, {str(k): v for k, v in item.items()}, self.key(key)))
        return out

    def string(
        self,
        name: str,
        default: str | _Missing = MISSING,
        *,
        pattern: str | None = None,
        choices: Sequence[str] | None = None,
        max_length: int = 4096,
    ) -> str:
        """Read a non-empty string."""
        if not self.has(name) and not isinstance(default, _Missing):
            return default
        value = self._get(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {_type_name(value)}")
        if not value.strip():
            raise self.error(name, "must not be empty")
        if len(value) > max_length:
            raise self.error(name, f"must be at most {max_length} characters")
        if choices is not None and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)} (got {value!r})")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.error(name, f"has an invalid value {value!r}")
        return value

    def optional_string(self, name: str) -> str | None:
        """Read a string that may be absent."""
        self._seen.add(name)
        return self.string(name) if self.has(name) else None

    def integer(
        self,
        name: str,
        default: int | _Missing = MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """Read an integer within bounds (booleans are not integers here)."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum} (got {value})")
        return value

    def number(
        self,
        name: str,
        default: float | _Missing = MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """Read a number (integer or float) within bounds."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"must be a number, not {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum} (got {value})")
        return float(value)

    def scalar(self, name: str) -> str:
        """Read a required integer or string as text (for versions)."""
        value = self._get(name, MISSING)
        if isinstance(value, bool) or not isinstance(value, int | str) or str(value).strip() == "":
            raise self.error(name, "must be a non-empty string or an integer")
        return str(value)

    def boolean(self, name: str, default: bool | _Missing = MISSING) -> bool:  # noqa: FBT001
        """Read a boolean."""
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {_type_name(value)}")
        return value

    def strings(
        self,
        name: str,
        default: Sequence[str] | _Missing = MISSING,
        *,
        pattern: str | None = None,
        choices: Sequence[str] | None = None,
        non_empty: bool = False,
    ) -> tuple[str, ...]:
        """Read a list of non-empty strings (a single string is accepted as a list of one)."""
        value = self._get(name, default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise self.error(name, f"must be a list of strings, not {_type_name(value)}")
        out: list[str] = []
        for index, item in enumerate(value):
            key = f"{name}[{index}]"
            if not isinstance(item, str) or not item.strip():
                raise self.error(key, "must be a non-empty string")
            if choices is not None and item not in choices:
                raise self.error(key, f"must be one of {', '.join(choices)} (got {item!r})")
            if pattern is not None and not re.fullmatch(pattern, item):
                raise self.error(key, f"has an invalid value {item!r}")
            out.append(item)
        if non_empty and not out:
            raise self.error(name, "must not be empty")
        return tuple(out)

    def path(self, name: str, default: str | _Missing = MISSING) -> Path:
        """Read a file path; relative paths are relative to the file's directory."""
        value = self.string(name, default)
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._file.parent / path)

    def optional_path(self, name: str) -> Path | None:
        """Read a file path that may be absent."""
        self._seen.add(name)
        return self.path(name) if self.has(name) else None

    def url(self, name: str, *, https_only: bool = True) -> str:
        """Read an absolute `https` (or, when allowed, `http`) URL."""
        value = self.string(name, max_length=2048)
        parsed = urlsplit(value)
        schemes = ("https",) if https_only else ("https", "http")
        if parsed.scheme not in schemes or not parsed.netloc:
            raise self.error(name, f"must be an absolute {' or '.join(schemes)} URL")
        return value

    def trust_domain(self, name: str) -> str:
        """Read a SPIFFE trust domain name."""
        value = self.string(name)
        try:
            return parse_trust_domain(value).name
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def spiffe_id(self, name: str) -> str:
        """Read a SPIFFE ID."""
        value = self.string(name)
        try:
            return str(parse_spiffe_id(value))
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def spiffe_ids(self, name: str) -> tuple[str, ...]:
        """Read a list of SPIFFE IDs (absent: none)."""
        out = []
        for index, value in enumerate(self.strings(name, ())):
            try:
                out.append(str(parse_spiffe_id(value)))
            except ValueError as exc:
                raise self.error(f"{name}[{index}]", str(exc)) from None
        return tuple(out)

    def finish(self) -> None:
        """Reject keys that no one read: they are typos or unsupported options."""
        unknown = sorted(str(k) for k in self._data if str(k) not in self._seen)
        if unknown:
            raise self.error(unknown[0], "is not a known setting")


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
