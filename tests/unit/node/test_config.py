"""Configuration: YAML file, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import load_settings
from node.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("NODE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(None)
    assert settings.ae_title == "AINODE"
    assert settings.dicom_port == 11112
    assert settings.allowed_calling_ae_titles == []
    assert settings.index_url.startswith("sqlite:///")


def test_shipped_default_config_is_valid_and_resolves_paths() -> None:
    settings = load_settings(REPO_ROOT / "deploy" / "node.yaml")
    assert settings.rules_file.resolve() == (REPO_ROOT / "deploy" / "rules.yaml").resolve()
    assert settings.model_repository.resolve() == (REPO_ROOT / "model_repository").resolve()
    assert settings.destinations["pacs"].ae_title == "ORTHANC"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path, "dicom_port: 11113\ndestinations:\n  pacs: {host: h, port: 104, ae_title: PACS}\n"
    )
    monkeypatch.setenv("NODE_DICOM_PORT", "11114")
    monkeypatch.setenv("NODE_DESTINATIONS__PACS__PORT", "4242")
    monkeypatch.setenv("NODE_ALLOWED_CALLING_AE_TITLES", '["ORTHANC"]')
    settings = load_settings(path)
    assert settings.dicom_port == 11114
    assert settings.destinations["pacs"].port == 4242
    assert settings.destinations["pacs"].host == "h"
    assert settings.allowed_calling_ae_titles == ["ORTHANC"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("dicom_port: 70000\n", "dicom_port"),
        ("ae_title: THIS_TITLE_IS_FAR_TOO_LONG\n", "ae_title"),
        ("destinations:\n  pacs: {host: h, port: 0, ae_title: P}\n", "destinations.pacs.port"),
        ("no_such_key: 1\n", "no_such_key"),
        ("export: {max_attempts: 0}\n", "export.max_attempts"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text))
    assert caught.value.key == key
    assert repr(key) in str(caught.value)
    assert "NODE_" in str(caught.value)


def test_invalid_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_QUIET_PERIOD_S", "soon")
    with pytest.raises(ConfigError, match="NODE_QUIET_PERIOD_S"):
        load_settings(_write(tmp_path, "{}\n"))


def test_unreadable_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(_write(tmp_path, "- a\n- b\n"))


def test_readme_documents_every_key() -> None:
    from node.config import DimseDestination, ExportPolicy, Settings

    readme = (REPO_ROOT / "README.md").read_text()
    keys = [
        *(k for k in Settings.model_fields if k != "export"),  # a group: its keys follow
        *(f"export.{k}" for k in ExportPolicy.model_fields),
        *(f"destinations.NAME.{k}" for k in DimseDestination.model_fields),
    ]
    missing = [k for k in keys if f"| `{k}` |" not in readme]
    assert missing == []


def test_config_check_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from node.admin.cli import app

    ok = CliRunner().invoke(
        app, ["config", "check", "--config", str(REPO_ROOT / "deploy/node.yaml")]
    )
    assert ok.exit_code == 0, ok.output
    assert "configuration OK: 1 rule(s), 1 destination(s)" in ok.output
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules: [{name: r, pipeline: lung_seg, model: lung_seg, version: '99',"
        " destinations: [pacs]}]\n"
    )
    config = _write(
        tmp_path,
        f"rules_file: {rules}\nmodel_repository: {REPO_ROOT / 'model_repository'}\n"
        "destinations: {pacs: {host: h, port: 104, ae_title: P}}\n",
    )
    bad = CliRunner().invoke(app, ["config", "check", "--config", str(config)])
    assert bad.exit_code == 1
    assert "version '99' is not in" in bad.output
