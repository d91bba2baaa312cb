"""The node's error hierarchy.

::

    NodeError
    ├── ConfigError
    ├── IngestError
    ├── StoreError
    ├── AssemblyError
    ├── RoutingError
    ├── PipelineError
    │   └── NotAccepted
    ├── BackendError
    │   ├── BackendUnavailable
    │   └── ModelNotFound
    └── ExportError
        ├── PeerUnreachable
        └── PeerRejected

Errors carry their context as attributes, never patient data: messages name DICOM attributes and
values such as transfer syntaxes or status codes, not names or IDs. Protocol statuses are mapped at
the edge (the C-STORE handler, the HTTP layer), not here.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration is invalid; ``key`` names the offending setting."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class IngestError(NodeError):
    """An incoming instance could not be accepted."""


class StoreError(NodeError):
    """The spool or the index could not be written or read."""


class AssemblyError(NodeError):
    """The instances of a series do not make one volume."""


class RoutingError(NodeError):
    """Rules are invalid or name something that does not exist."""


class PipelineError(NodeError):
    """A pipeline failed on its input."""


class NotAccepted(PipelineError):
    """A pipeline declines a volume it was not made for; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BackendError(NodeError):
    """An inference backend failed."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached or is not installed."""


class ModelNotFound(BackendError):
    """The model repository has no such model or version."""

    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"model {model!r} version {version!r} not found in the model repository")
        self.model = model
        self.version = version


class ExportError(NodeError):
    """A result could not be delivered to a destination."""

    def __init__(self, message: str, *, peer: str) -> None:
        super().__init__(message)
        self.peer = peer


class PeerUnreachable(ExportError):
    """The destination did not accept an association or connection (retryable)."""


class PeerRejected(ExportError):
    """The destination refused the object with a failure status (``status``)."""

    def __init__(self, message: str, *, peer: str, status: int) -> None:
        super().__init__(message, peer=peer)
        self.status = status
