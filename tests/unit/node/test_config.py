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
    from node.config import (
        DicomwebDestination,
        DimseDestination,
        ExportPolicy,
        InferenceSettings,
        Settings,
    )

    readme = (REPO_ROOT / "README.md").read_text()
    groups = {"export", "inference"}  # their keys follow
    keys = [
        *(k for k in Settings.model_fields if k not in groups),
        *(f"export.{k}" for k in ExportPolicy.model_fields),
        *(f"inference.{k}" for k in InferenceSettings.model_fields),
        *(f"destinations.NAME.{k}" for k in DimseDestination.model_fields),
        *(f"destinations.NAME.{k}" for k in DicomwebDestination.model_fields),
    ]
    missing = [k for k in keys if f"| `{k}` |" not in readme]
    assert missing == []


def test_destination_kinds(tmp_path: Path) -> None:
    from node.config import DicomwebDestination, DimseDestination

    settings = load_settings(
        _write(
            tmp_path,
            "destinations:\n"
            "  pacs: {host: h, port: 104, ae_title: P}\n"
            "  web: {kind: dicomweb, url: 'http://h:8042/dicom-web/', token: abcdefgh, "
            "ca_certificates: ca.pem}\n",
        )
    )
    assert isinstance(settings.destinations["pacs"], DimseDestination)
    web = settings.destinations["web"]
    assert isinstance(web, DicomwebDestination)
    assert web.url == "http://h:8042/dicom-web"
    assert web.ca_certificates == (tmp_path / "ca.pem").resolve()
    assert "abcdefgh" not in repr(settings)
    with pytest.raises(ConfigError, match=r"destinations\.web"):
        load_settings(_write(tmp_path, "destinations: {web: {kind: dicomweb, url: 'ftp://h'}}\n"))
    with pytest.raises(ConfigError, match="go together"):
        load_settings(
            _write(tmp_path, "destinations: {web: {kind: dicomweb, url: 'http://h', username: u}}")
        )


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


def test_security_and_watermark_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("NODE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(None)
    assert settings.require_called_ae_title is True
    assert settings.max_associations == 32
    assert settings.min_free_disk_mb == 1024
    assert settings.max_image_pixels == 512 * 1024 * 1024
    assert settings.api_token is None
    assert settings.tls.port is None


def test_api_token_from_the_environment_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_API_TOKEN", "not-to-be-seen-anywhere")
    settings = load_settings(None)
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "not-to-be-seen-anywhere"
    assert "not-to-be-seen-anywhere" not in repr(settings)
    assert "not-to-be-seen-anywhere" not in str(settings.model_dump(mode="json"))


def test_tls_paths_are_relative_to_the_file_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        "tls: {port: 2762, certificate: certs/node.crt, private_key: certs/node.key,"
        " ca_certificates: /etc/ca.pem, require_client_certificate: true}\n",
    )
    monkeypatch.setenv("NODE_TLS__PORT", "11113")
    settings = load_settings(path)
    assert settings.tls.port == 11113
    assert settings.tls.certificate == tmp_path / "certs" / "node.crt"
    assert settings.tls.private_key == tmp_path / "certs" / "node.key"
    assert settings.tls.ca_certificates == Path("/etc/ca.pem")
    assert settings.tls.require_client_certificate is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls: {port: 2762}\n", "tls.port needs tls.certificate and tls.private_key"),
        (
            "tls: {require_client_certificate: true}\n",
            "tls.require_client_certificate needs tls.ca_certificates",
        ),
        ("min_free_disk_mb: -1\n", "greater than or equal to 0"),
        ("max_image_pixels: 0\n", "greater than or equal to 1"),
        ("tls: {port: 70000, certificate: a, private_key: b}\n", "less than or equal to 65535"),
        ("api_token: short-token\n", "16 characters or more"),
    ],
)
def test_invalid_security_settings_name_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, text))


def test_a_rejected_token_is_not_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_API_TOKEN", "tiny-secret")
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, "{}\n"))
    assert caught.value.key == "api_token"
    assert "tiny-secret" not in str(caught.value)


def test_readme_documents_every_tls_key() -> None:
    from node.config import TlsSettings

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [k for k in TlsSettings.model_fields if f"| `tls.{k}` |" not in readme]
    assert missing == []
    assert "## Security" in readme
