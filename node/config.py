"""The node's configuration: one YAML file, every key also settable by an environment variable.

Environment variables take precedence over the file. Their names are ``NODE_`` followed by the key
in capitals, with ``__`` between nested keys, e.g. ``NODE_DICOM_PORT=11113`` or
``NODE_DESTINATIONS__PACS__PORT=4242``; lists and mappings may be given as JSON
(``NODE_ALLOWED_CALLING_AE_TITLES='["ORTHANC"]'``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from node.errors import ConfigError
from node.ingest.header import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "DicomwebDestination",
    "DimseDestination",
    "ExportPolicy",
    "InferenceSettings",
    "Settings",
    "TlsSettings",
    "load_settings",
]

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


class DicomwebDestination(BaseModel):
    """A DICOMweb service that receives results by STOW-RS."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dicomweb"] = "dicomweb"
    url: str = Field(
        description="Base URL of the DICOMweb service (the part before /studies), "
        "e.g. http://pacs:8042/dicom-web."
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token sent as Authorization: Bearer; unset: none."
    )
    username: str | None = Field(default=None, description="HTTP basic-auth user; unset: none.")
    password: SecretStr | None = Field(default=None, description="HTTP basic-auth password.")
    ca_certificates: Path | None = Field(
        default=None, description="CA certificates (PEM) to verify an https URL against."
    )

    @field_validator("url")
    @classmethod
    def _validate_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("a DICOMweb URL starts with http:// or https:// and a host")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_auth(self) -> DicomwebDestination:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.token is not None and self.username is not None:
            raise ValueError("give a token or a username and password, not both")
        return self


def _destination_kind(value: Any) -> str:
    """The ``kind`` of a destination, ``dimse`` when not given (the original, only kind)."""
    if isinstance(value, dict):
        return str(value.get("kind", "dimse"))
    return str(getattr(value, "kind", "dimse"))


Destination = Annotated[
    Annotated[DimseDestination, Tag("dimse")] | Annotated[DicomwebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind),
]


class InferenceSettings(BaseModel):
    """Where models run: in the node's process, or on a Triton Inference Server."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["embedded", "triton"] = Field(
        default="embedded",
        description="embedded: torch in the node's process; triton: a Triton server at triton_url.",
    )
    triton_url: str = Field(
        default="127.0.0.1:8001", description="host:port of Triton's gRPC (or HTTP) endpoint."
    )
    triton_protocol: Literal["grpc", "http"] = Field(
        default="grpc", description="How the node talks to Triton."
    )
    timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for one inference request or model load."
    )


class ExportPolicy(BaseModel):
    """How deliveries are retried."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(
        default=8, ge=1, description="Attempts per destination before failing."
    )
    backoff_initial_s: float = Field(default=2.0, gt=0, description="Wait after the first failure.")
    backoff_max_s: float = Field(default=300.0, gt=0, description="Upper bound of the wait.")
    timeout_s: float = Field(default=30.0, gt=0, description="Association, DIMSE and HTTP timeout.")


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
    receivers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Processes receiving DICOM on the port(s), sharing max_associations; 0 "
        "receives in the node's own process.",
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
    destinations: dict[str, Destination] = Field(
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
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
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
        loc = _without_union_tags(first["loc"])
        key = ".".join(str(part) for part in loc)
        env_name = "NODE_" + "__".join(str(part).upper() for part in loc)
        raise ConfigError(
            f"invalid setting {key!r} (environment variable {env_name}): {first['msg']}"
            + (f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""),
            key=key,
        ) from exc


def _without_union_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """``destinations.NAME.dimse.port`` (pydantic names the union member) as the user wrote it."""
    if len(loc) > 2 and loc[0] == "destinations" and loc[2] in ("dimse", "dicomweb"):
        return loc[:2] + loc[3:]
    return loc


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
    destinations = resolved.get("destinations")
    if isinstance(destinations, dict):
        resolved["destinations"] = {
            name: _resolve_ca(value, base) if isinstance(value, dict) else value
            for name, value in destinations.items()
        }
    return resolved


def _resolve_ca(destination: dict[str, Any], base: Path) -> dict[str, Any]:
    ca = destination.get("ca_certificates")
    if isinstance(ca, str) and not Path(ca).is_absolute():
        return {**destination, "ca_certificates": str((base / ca).resolve())}
    return destination
