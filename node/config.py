"""The node's configuration: one YAML file, every key also settable by an environment variable.

Environment variables take precedence over the file. Their names are ``NODE_`` followed by the key
in capitals, with ``__`` between nested keys, e.g. ``NODE_DICOM_PORT=11113`` or
``NODE_DESTINATIONS__PACS__PORT=4242``; lists and mappings may be given as JSON
(``NODE_ALLOWED_CALLING_AE_TITLES='["ORTHANC"]'``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from node.errors import ConfigError
from node.ingest.header import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["DimseDestination", "ExportPolicy", "Settings", "TlsSettings", "load_settings"]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, 1..16 chars


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError("an AE title is 1 to 16 printable characters without a backslash")
    return stripped


class DimseDestination(BaseModel):
    """A DICOM peer that receives results by C-STORE."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dimse"] = "dimse"
    host: str = Field(description="Host name or address of the peer.")
    port: int = Field(ge=1, le=65535, description="The peer's DICOM port.")
    ae_title: str = Field(description="The peer's AE title (called AE title).")

    _validate_ae = field_validator("ae_title")(_check_ae_title)


class ExportPolicy(BaseModel):
    """How deliveries are retried."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(
        default=8, ge=1, description="Attempts per destination before failing."
    )
    backoff_initial_s: float = Field(default=2.0, gt=0, description="Wait after the first failure.")
    backoff_max_s: float = Field(default=300.0, gt=0, description="Upper bound of the wait.")
    timeout_s: float = Field(default=30.0, gt=0, description="Association and DIMSE timeout.")


class TlsSettings(BaseModel):
    """DICOM over TLS on a second port (the plain port keeps listening)."""

    model_config = ConfigDict(extra="forbid")

    port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the DICOM TLS listener; unset: no TLS."
    )
    certificate: Path | None = Field(
        default=None, description="The node's certificate (PEM), with any intermediates."
    )
    private_key: Path | None = Field(
        default=None, description="The certificate's private key (PEM, not encrypted)."
    )
    ca_certificates: Path | None = Field(
        default=None, description="CA certificates (PEM) client certificates are checked against."
    )
    require_client_certificate: bool = Field(
        default=False, description="Refuse clients without a certificate from ca_certificates."
    )

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if self.port is not None and (self.certificate is None or self.private_key is None):
            raise ValueError("tls.port needs tls.certificate and tls.private_key")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("tls.require_client_certificate needs tls.ca_certificates")
        return self


class Settings(BaseSettings):
    """Every setting of the node, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="NODE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    ae_title: str = Field(default="AINODE", description="The node's own AE title.")
    dicom_port: int = Field(default=11112, ge=1, le=65535, description="C-STORE/C-ECHO port.")
    http_port: int = Field(default=8080, ge=1, le=65535, description="HTTP port (health, jobs).")
    bind_address: str = Field(default="0.0.0.0", description="Address both listeners bind to.")  # noqa: S104
    data_dir: Path = Field(default=Path("var"), description="Spool, index and results live here.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the index; default SQLite in data_dir."
    )
    allowed_calling_ae_titles: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty allows any.",
    )
    max_associations: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Associations served at once (plain and TLS); more are rejected, transient.",
    )
    require_called_ae_title: bool = Field(
        default=True, description="Reject associations whose called AE title is not ae_title."
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the HTTP API requires (all but /health); unset: the API is open.",
    )
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="Below this much free space under data_dir, stores are refused; 0 disables.",
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="Largest Rows x Columns x NumberOfFrames x SamplesPerPixel accepted.",
    )
    destinations: dict[str, DimseDestination] = Field(
        default_factory=dict, description="Named peers that rules send results to."
    )
    rules_file: Path = Field(
        default=Path("deploy/rules.yaml"), description="The routing rules (YAML)."
    )
    model_repository: Path = Field(
        default=Path("model_repository"), description="The model repository folder."
    )
    quiet_period_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds without new instances, after the association closed, before a "
        "series counts as complete.",
    )
    workers: int = Field(default=1, ge=1, le=32, description="Jobs run at the same time.")
    torch_threads: int = Field(default=0, ge=0, description="CPU threads for torch; 0 = default.")
    export: ExportPolicy = Field(default_factory=ExportPolicy)
    series_number: int = Field(default=9001, ge=1, description="SeriesNumber of result series.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _validate_ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _validate_allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]

    @field_validator("api_token")
    @classmethod
    def _validate_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("an API token needs 16 characters or more (openssl rand -hex 32)")
        return value

    @property
    def index_url(self) -> str:
        """The index's SQLAlchemy URL (SQLite under ``data_dir`` unless set)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables first, then the YAML file's values (passed as init kwargs)."""
        return env_settings, init_settings


def load_settings(path: Path | None = None) -> Settings:
    """Read ``path`` (YAML) if given, overlay the environment, and validate.

    Relative paths in the file are resolved against the file's folder.

    Raises
    ------
    ConfigError
        Naming the first bad key, e.g. ``dicom_port: Input should be less than or equal to 65535``.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings at its top level")
        values = _resolve_paths(loaded, path.parent)
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        env_name = "NODE_" + "__".join(str(part).upper() for part in first["loc"])
        raise ConfigError(
            f"invalid setting {key!r} (environment variable {env_name}): {first['msg']}"
            + (f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""),
            key=key,
        ) from exc


def _resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    resolved = dict(values)
    for key in ("data_dir", "rules_file", "model_repository"):
        if isinstance(resolved.get(key), str) and not Path(resolved[key]).is_absolute():
            resolved[key] = str((base / resolved[key]).resolve())
    tls = resolved.get("tls")
    if isinstance(tls, dict):
        resolved["tls"] = tls = dict(tls)
        for key in ("certificate", "private_key", "ca_certificates"):
            if isinstance(tls.get(key), str) and not Path(tls[key]).is_absolute():
                tls[key] = str((base / tls[key]).resolve())
    return resolved
