"""Configuration loading: a valid file becomes frozen settings; each mistake names file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config.settings import load_settings
from broker.errors import ConfigError
from tests.support.broker import Identity


def test_valid_configuration_loads_frozen(identity: Identity) -> None:
    """The test configuration loads, with relative paths resolved against the file."""
    settings = identity.settings()
    assert settings.trust_domain == "example.org"
    assert settings.spiffe_id == "spiffe://example.org/broker"
    assert settings.identity.files is not None
    assert settings.identity.files.svid == identity.directory.resolve() / "broker" / "svid.pem"
    assert settings.authentication.jwt_svid.audience == ("spiffe://example.org/broker",)
    assert settings.authentication.jwt_svid.max_lifetime_seconds == 3600
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.trust_domain = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ({"trust_domain": None}, "trust_domain", "is required"),
        ({"trust_domain": "Not A Domain"}, "trust_domain", "not a valid trust domain"),
        ({"spiffe_id": "spiffe://other.org/broker"}, "spiffe_id", "must be in trust domain"),
        ({"spiffe_id": "spiffe://example.org"}, "spiffe_id", "trust domain root"),
        ({"trust_doman": "typo"}, "trust_doman", "is not a known setting"),
        ({"listen": {"port": 70000}}, "listen.port", "at most 65535"),
        ({"listen": {"port": "8443"}}, "listen.port", "must be an integer"),
        ({"identity": {"source": "magic"}}, "identity.source", "must be one of"),
        ({"identity": {"files": {"svid": None}}}, "identity.files.svid", "is required"),
        ({"identity": {"files": {"bundle": None}}}, "identity.files.bundle", "is required"),
        (
            {"authentication": {"jwt_svid": {"audience": []}}},
            "authentication.jwt_svid.audience",
            "must not be empty",
        ),
        (
            {"authentication": {"jwt_svid": {"audience": None}}},
            "authentication.jwt_svid.audience",
            "is required",
        ),
        (
            {"authentication": {"jwt_svid": {"leeway_seconds": 61}}},
            "authentication.jwt_svid.leeway_seconds",
            "at most 60",
        ),
        (
            {"authentication": {"jwt_svid": {"max_lifetime_seconds": 59}}},
            "authentication.jwt_svid.max_lifetime_seconds",
            "at least 60",
        ),
        (
            {"authentication": {"jwt_svid": {"max_lifetime_seconds": 86401}}},
            "authentication.jwt_svid.max_lifetime_seconds",
            "at most 86400",
        ),
        (
            {"authentication": {"jwt_svid": {"algorithms": ["none"]}}},
            "authentication.jwt_svid.algorithms[0]",
            "must be one of",
        ),
        (
            {"authentication": {"jwt_svid": {"algorithms": ["HS256"]}}},
            "authentication.jwt_svid.algorithms[0]",
            "must be one of",
        ),
        (
            {"authentication": {"jwt_svid": {"algorithms": ["EdDSA"]}}},
            "authentication.jwt_svid.algorithms[0]",
            "must be one of",
        ),
        ({"authentication": None}, "authentication", "is required"),
        ({"admins": ["not-a-spiffe-id"]}, "admins[0]", "not a valid SPIFFE ID"),
        (
            {"identity": {"federation": [{"trust_domain": "example.org", "bundle": "x.pem"}]}},
            "identity.federation[0].trust_domain",
            "our own trust domain",
        ),
        (
            {"identity": {"federation": [{"trust_domain": "partner.org"}]}},
            "identity.federation[0].bundle",
            "is required",
        ),
        (
            {"identity": {"workload_api": {"socket": "unix:///x"}}},
            "identity.workload_api",
            "is set but identity.source is 'files'",
        ),
    ],
)
def test_invalid_configuration_names_file_and_key(
    identity: Identity, override: dict[str, Any], key: str, message: str
) -> None:
    """Each invalid setting is a ConfigError naming the file and the dotted key."""
    path = identity.write_config(**override)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path)
    text = str(excinfo.value)
    assert text.startswith(f"{path.resolve()}: {key}: "), text
    assert message in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("garbage: [unclosed\n", "not valid YAML (line 2"),
        ("- a\n- list\n", "must be a YAML mapping"),
        ("", "is empty"),
        ("\t\x00binary", "not valid YAML"),
    ],
)
def test_unparseable_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    """A file that is not a YAML mapping is refused with the file named."""
    path = tmp_path / "garbage.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path)
    assert message in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing configuration file is reported by path."""
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "absent.yaml")


def test_jwt_svid_max_lifetime_is_configurable(identity: Identity) -> None:
    """authentication.jwt_svid.max_lifetime_seconds is read into the settings."""
    settings = identity.settings(authentication={"jwt_svid": {"max_lifetime_seconds": 600}})
    assert settings.authentication.jwt_svid.max_lifetime_seconds == 600


def test_workload_api_socket_must_be_unix(identity: Identity) -> None:
    """py-spiffe only speaks unix: sockets; anything else is refused up front."""
    path = identity.directory / "wl.yaml"
    data = identity.config(
        identity={
            "source": "workload_api",
            "files": None,
            "workload_api": {"socket": "tcp://1.2.3.4:1"},
        }
    )
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=r"identity\.workload_api\.socket: must be a unix: address"
    ):
        load_settings(path)
