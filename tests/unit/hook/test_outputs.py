"""Output formats: per-tool files, env file, JSON file, template; atomic, 0600 in a 0700 dir."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from string import Template
from types import MappingProxyType

import pytest

from broker.hook.errors import HookError
from broker.hook.model import Credential
from broker.hook.outputs import EnvFile, JsonFile, Outputs, TemplateFile, ToolFiles
from broker.hook.outputs.envfile import env_name

NASTY = "p'a ss$(touch PWNED)`x`\"\\"


def jwt(tool: str, token: str = "eyJ.payload.sig") -> Credential:  # noqa: S107
    document = {
        "tool": tool,
        "type": "jwt",
        "token": token,
        "credential_id": f"jti-{tool}",
        "expires_at": "2030-01-01T00:05:00Z",
    }
    return Credential(tool, "jwt", 1893456300.0, 1893456000.0, "dec-1", MappingProxyType(document))


def vault(tool: str) -> Credential:
    document = {
        "tool": tool,
        "type": "vault",
        "data": {"username": "v-user", "password": NASTY},
        "credential_id": "lease/1",
        "expires_at": "2030-01-01T00:05:00Z",
    }
    return Credential(
        tool, "vault", 1893456300.0, 1893456000.0, "dec-2", MappingProxyType(document)
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_format_is_private_and_removal_reaches_all(tmp_path: Path) -> None:
    """All formats are 0600 in a 0700 dir; a removed credential leaves every one of them."""
    out = tmp_path / "out"
    template = TemplateFile(Template("crm=${crm_token}\n"), out / "app.ini", ("crm", "db"))
    outputs = Outputs(
        out,
        [
            ToolFiles(out, ("crm", "db")),
            EnvFile(out / "credentials.env"),
            JsonFile(out / "credentials.json"),
            template,
        ],
    )
    outputs.write({"crm": jwt("crm", "tok-crm-1"), "db": vault("db")})
    assert mode(out) == 0o700
    files = sorted(p.name for p in out.iterdir())
    assert files == ["app.ini", "credentials.env", "credentials.json", "crm.json", "db.json"]
    assert all(mode(out / name) == 0o600 for name in files)
    assert json.loads((out / "crm.json").read_text())["decision_id"] == "dec-1"

    outputs.write({"db": vault("db")})
    assert not (out / "crm.json").exists()
    for name in ("credentials.env", "credentials.json", "app.ini"):
        assert "tok-crm-1" not in (out / name).read_text(), name
    assert (out / "app.ini").read_text() == "crm=\n"
    assert sorted(p.name for p in out.iterdir()) == [n for n in files if n != "crm.json"]


def test_unwritable_directory_is_exit_7(tmp_path: Path) -> None:
    """An output directory that cannot be created is exit 7."""
    (tmp_path / "file").write_text("")
    outputs = Outputs(tmp_path / "file" / "out", [ToolFiles(tmp_path / "file" / "out", ("a",))])
    with pytest.raises(HookError) as caught:
        outputs.write({"a": jwt("a")})
    assert caught.value.code == 7


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_env_file_values_survive_a_shell(tmp_path: Path) -> None:
    """Shell-quoted values come back byte for byte when the file is sourced, and run nothing."""
    path = tmp_path / "credentials.env"
    EnvFile(path).write({"crm-api": jwt("crm-api"), "db": vault("db")})
    script = (
        "set -a; . ./credentials.env; "
        'printf "%s\\n%s\\n%s\\n" "$BROKER_CREDENTIAL_CRM_API" '
        '"$BROKER_CREDENTIAL_DB_PASSWORD" "$BROKER_CREDENTIAL_DB_EXPIRES_AT"'
    )
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == ["eyJ.payload.sig", NASTY, "2030-01-01T00:05:00Z"]
    assert not (tmp_path / "PWNED").exists()
    assert env_name("crm-api") == "BROKER_CREDENTIAL_CRM_API"


def test_json_file_holds_every_credential(tmp_path: Path) -> None:
    """One document, credentials by tool, each with its decision_id."""
    path = tmp_path / "c.json"
    JsonFile(path).write({"crm": jwt("crm"), "db": vault("db")})
    document = json.loads(path.read_text())
    assert document["credentials"]["crm"]["token"] == "eyJ.payload.sig"
    assert document["credentials"]["db"]["data"]["password"] == NASTY
    assert document["credentials"]["db"]["decision_id"] == "dec-2"


def test_template_variables(tmp_path: Path) -> None:
    """Each documented variable renders; a tool name with '-' uses '_'; $$ is a dollar."""
    text = (
        "${crm_api_token} ${crm_api_type} ${crm_api_expires_at} ${crm_api_credential_id} "
        "${crm_api_decision_id} ${db_data_username} ${db_data_password} ${db_token} $$x"
    )
    template = TemplateFile(Template(text), tmp_path / "out", ("crm-api", "db"))
    rendered = template.render({"crm-api": jwt("crm-api"), "db": vault("db")})
    assert rendered == (
        f"eyJ.payload.sig jwt 2030-01-01T00:05:00Z jti-crm-api dec-1 v-user {NASTY}  $x"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${crm_tokn}", "unknown variables crm_tokn"),
        ("${other_token}", "unknown variables other_token"),
        ("${crm_data_}", "unknown variables crm_data_"),
        ("cost: $ 5", "invalid placeholder"),
    ],
)
def test_template_mistakes_are_usage_errors(text: str, message: str) -> None:
    """A misspelt or foreign variable, or a bare $, is exit 2 at start."""
    with pytest.raises(HookError) as caught:
        TemplateFile(Template(text), Path("/nonexistent"), ("crm",))
    assert caught.value.code == 2
    assert message in str(caught.value)


def test_unreadable_template_is_a_usage_error(tmp_path: Path) -> None:
    """A missing template file is exit 2."""
    with pytest.raises(HookError) as caught:
        TemplateFile.load(tmp_path / "missing.tmpl", tmp_path / "x", ("crm",))
    assert caught.value.code == 2
