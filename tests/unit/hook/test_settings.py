"""The command line: checks up front (exit 2), aliases, environment defaults, the README's table."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from broker.hook.errors import HookError
from broker.hook.settings import build_parser, environment_variables, parse_settings

REPO = Path(__file__).resolve().parents[3]
BASE = ["--broker", "https://127.0.0.1:8443", "--tools", "a,b"]


def usage_error(*args: str) -> str:
    with pytest.raises(HookError) as caught:
        parse_settings([*BASE, *args])
    assert caught.value.code == 2
    return str(caught.value)


def test_broker_alias_once_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """--broker is --broker-url; --once beats BROKER_HOOK_MODE=sidecar; defaults as documented."""
    monkeypatch.setenv("BROKER_HOOK_MODE", "sidecar")
    settings = parse_settings([*BASE, "--once"])
    assert settings.broker_url == "https://127.0.0.1:8443"
    assert settings.tools == ("a", "b")
    assert settings.sidecar is False
    assert settings.formats == ("files",)
    assert settings.svid_files is None
    assert parse_settings(BASE).sidecar is True


def test_environment_gives_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every option has its variable; numbers from the environment are parsed like flags."""
    monkeypatch.setenv("BROKER_URL", "https://b:1")
    monkeypatch.setenv("BROKER_TOOLS", "x")
    monkeypatch.setenv("BROKER_HOOK_HEALTH_PORT", "9000")
    monkeypatch.setenv("BROKER_HOOK_FORMAT", "env,json")
    monkeypatch.setenv("BROKER_TTL", "")
    settings = parse_settings([])
    assert (settings.broker_url, settings.tools, settings.health_port) == (
        "https://b:1",
        ("x",),
        9000,
    )
    assert settings.formats == ("env", "json")
    assert settings.ttl is None


def test_svid_files_from_a_directory_and_explicit_paths() -> None:
    """--svid-dir gives the spiffe-helper names; explicit paths replace single files."""
    settings = parse_settings(
        [*BASE, "--svid-dir", "d", "--svid-key-file", "k.pem", "--svid-bundle-file", "ca.pem"]
    )
    assert settings.svid_files is not None
    assert settings.svid_files.svid == Path("d/svid.pem")
    assert settings.svid_files.key == Path("k.pem")
    assert settings.svid_files.bundle == Path("ca.pem")
    only = parse_settings([*BASE, "--svid-dir", "d"]).svid_files
    assert only is not None
    assert (only.key, only.bundle) == (Path("d/svid_key.pem"), Path("d/svid_bundle.pem"))


def test_signal_and_command() -> None:
    """Signal by name or number; the command is split like a shell would, but run without one."""
    settings = parse_settings(
        [
            *BASE,
            "--on-refresh-signal",
            "hup",
            "--signal-pid",
            "42",
            "--on-refresh-exec",
            "kill -s 'HUP' 1",
        ]
    )
    assert settings.signal is not None
    assert settings.signal.signum == signal.SIGHUP
    assert settings.on_refresh_exec == ("kill", "-s", "HUP", "1")
    numbered = parse_settings([*BASE, "--on-refresh-signal", "10", "--pid-file", "p"]).signal
    assert numbered is not None
    assert numbered.signum == signal.SIGUSR1


def test_template_output_name() -> None:
    """The rendered file is named after the template, less .tmpl."""
    settings = parse_settings([*BASE, "--format", "template", "--template", "conf/app.ini.tmpl"])
    assert settings.template_out == "app.ini"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tools", ""], "--tools is required"),
        (["--tools", "../etc"], "invalid tool name"),
        (["--tools", ",".join(f"t{i}" for i in range(17))], "at most 16"),
        (["--format", "xml"], "--format"),
        (["--format", "template"], "go together"),
        (["--template", "x.tmpl"], "go together"),
        (["--format", "env", "--env-file", "../x.env"], "file name inside --out"),
        (["--format", "files,json", "--json-file", "a.json"], "same file: a.json"),
        (["--on-refresh-signal", "SIGHUP"], "exactly one of"),
        (["--on-refresh-signal", "SIGNOPE", "--signal-pid", "5"], "unknown signal"),
        (["--signal-pid", "5"], "need --on-refresh-signal"),
        (["--on-refresh-signal", "HUP", "--signal-pid", "1"], "> 1"),
        (["--on-refresh-exec", "cmd 'unclosed"], "--on-refresh-exec"),
        (["--on-refresh-exec", "  "], "empty"),
        (["--auth", "jwt", "--svid-dir", "d"], "needs --jwt-svid-file"),
        (["--jwt-svid-file", "j"], "goes with SVID files"),
        (["--svid-file", "s.pem"], "--svid-key-file is required without --svid-dir"),
        (["--backoff-initial", "2", "--backoff-max", "1"], "--backoff-max"),
        (["--timeout", "0"], "must be positive"),
        (["--check-interval", "-1"], "must not be negative"),
        (["--health-port", "70000"], "TCP port"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    """Each inconsistent command line is exit 2 with a message naming the option."""
    assert message in usage_error(*args)


def test_missing_broker_url() -> None:
    """--broker-url is required."""
    with pytest.raises(HookError) as caught:
        parse_settings(["--tools", "a"])
    assert "--broker-url is required" in str(caught.value)


def test_no_abbreviations() -> None:
    """Prefixes of options are not accepted (a future option cannot change their meaning)."""
    with pytest.raises(SystemExit):
        parse_settings(["--brok", "https://x", "--tools", "a"])


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## broker-hook\n")
    return text[start : text.index("\n## ", start + 5)]


def test_readme_documents_every_option_and_variable() -> None:
    """Each flag and environment variable of `broker-hook` appears in the README's section."""
    section = readme_section()
    flags = [
        flag
        for action in build_parser()._actions
        for flag in action.option_strings
        if flag not in {"-h", "--help"}
    ]
    missing = [f for f in flags if f"`{f}" not in section]
    missing += [v for v in environment_variables() if f"`{v}`" not in section]
    assert not missing, missing
    for code in (0, 2, 3, 4, 5, 6, 7):
        assert re.search(rf"^\| {code} \|", section, re.MULTILINE), code
