"""STOW-RS export to a DICOMweb service with dicomweb-client.

A request is confirmed only by the STOW-RS response (PS3.18 10.5.3): every SOP Instance UID sent
must come back in its ReferencedSOPSequence (0008,1199). An instance in its FailedSOPSequence
(0008,1198) is refused with the FailureReason (0008,1197) the server gives; an instance in neither
was not stored, whatever the HTTP status says.

Failures worth retrying (:class:`PeerUnreachable`): no connection, a time-out, HTTP 408, 429 and
5xx, and failure reasons 0xA7xx (out of resources). Everything else is a refusal
(:class:`PeerRejected`): its ``status`` is the failure reason when the server named one per
instance, the HTTP status otherwise (401, 403, 404, 409, 415, ...), and 0 for an answer that
confirms nothing, a redirect, or a TLS certificate that does not verify against
``ca_certificates`` (or the system's CAs).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from node.config import DicomwebDestination
from node.errors import PeerRejected, PeerUnreachable

__all__ = ["DicomwebExporter", "stow_outcome"]

# Failure reasons after which a retry may succeed: "refused: out of resources" (PS3.4 / PS3.18).
_RETRYABLE_REASONS = range(0xA700, 0xA800)
# HTTP statuses after which a retry may succeed: request time-out, too many requests, 5xx.
_RETRYABLE_HTTP = frozenset({408, 429})
# The STOW-RS answer is asked for, and read, as DICOM JSON (PS3.18 F.2).
_DICOM_JSON = "application/dicom+json"
_JSON_TYPES = frozenset({_DICOM_JSON, "application/json"})
_TAG_KEY = re.compile(r"^[0-9A-Fa-f]{8}$")
# FailureReason when a failed instance names none: "processing failure" (0x0110).
_PROCESSING_FAILURE = 0x0110


class DicomwebExporter:
    """Sends result files to one DICOMweb service by STOW-RS, one request per :meth:`send`."""

    def __init__(self, name: str, destination: DicomwebDestination, *, timeout_s: float) -> None:
        self.name = name
        self._destination = destination
        self._timeout = timeout_s

    def send(self, paths: list[Path]) -> None:
        """Deliver ``paths``; see :class:`node.export.base.Exporter`.

        The files are read with pydicom and posted in one multipart request, so the caller bounds
        how many go at once. Tokens and passwords never appear in the errors raised.
        """
        datasets = [pydicom.dcmread(path) for path in paths]
        expected = {str(ds.SOPInstanceUID) for ds in datasets}
        responses: list[requests.Response] = []
        with self._session(responses) as session:
            client = DICOMwebClient(self._destination.url, session=session, timeout=self._timeout)
            client.set_http_retry_params(retry=False)  # the job runner retries, with backoff
            try:
                parsed = client.store_instances(datasets)
            except requests.HTTPError as exc:
                raise self._http_error(exc.response, expected) from None
            except requests.exceptions.TooManyRedirects:
                raise PeerRejected(
                    f"{self._peer} answered with a redirect; set the destination's url to the "
                    "address it redirects to",
                    peer=self.name,
                    status=0,
                ) from None
            except requests.RequestException as exc:
                raise self._connection_error(exc) from None
        response = responses[-1] if responses else None
        answer = parsed if _is_stow_answer(parsed) else _dicom_json(response)
        stow_outcome(
            answer, expected, peer=self.name, where=self._peer, http_status=_status(response)
        )

    @property
    def _peer(self) -> str:
        """The service's address for messages: no credentials, no query string."""
        parts = urlsplit(self._destination.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    def _session(self, responses: list[requests.Response]) -> requests.Session:
        destination = self._destination
        session = _Session(verify=destination.ca_certificates)
        session.max_redirects = 0  # a redirected POST would become a GET and confirm nothing
        session.headers["Accept"] = _DICOM_JSON
        if destination.token is not None:
            session.headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
        elif destination.username is not None and destination.password is not None:
            session.auth = (destination.username, destination.password.get_secret_value())
        session.hooks["response"].append(lambda response, *_a, **_k: responses.append(response))
        return session

    def _http_error(
        self, response: requests.Response | None, expected: set[str]
    ) -> PeerRejected | PeerUnreachable:
        status = _status(response)
        if status in _RETRYABLE_HTTP or status >= 500:
            return PeerUnreachable(f"{self._peer} answered HTTP {status}", peer=self.name)
        answer = _dicom_json(response)
        if answer is not None and answer.get("FailedSOPSequence"):
            try:
                stow_outcome(answer, expected, peer=self.name, where=self._peer, http_status=status)
            except (PeerRejected, PeerUnreachable) as exc:
                return exc
        hint = {
            401: " (authentication failed: check the token or username and password)",
            403: " (not allowed: check the account's rights)",
            404: " (no STOW-RS service there: check the url, the part before /studies)",
            415: " (the service does not take application/dicom)",
        }.get(status, "")
        return PeerRejected(
            f"{self._peer} refused the request with HTTP {status}{hint}",
            peer=self.name,
            status=status,
        )

    def _connection_error(self, exc: requests.RequestException) -> PeerRejected | PeerUnreachable:
        if _caused_by(exc, ssl.SSLCertVerificationError):
            return PeerRejected(
                f"{self._peer}: the server's TLS certificate is not trusted (set ca_certificates "
                "to the CA that signed it) or does not name the host",
                peer=self.name,
                status=0,
            )
        kind = "timed out" if isinstance(exc, requests.Timeout) else "could not be reached"
        return PeerUnreachable(f"{self._peer} {kind} ({type(exc).__name__})", peer=self.name)


def stow_outcome(
    answer: Dataset | None,
    expected: set[str],
    *,
    peer: str,
    where: str,
    http_status: int,
) -> None:
    """Check a STOW-RS response confirms every SOP Instance UID in ``expected``.

    Parameters
    ----------
    answer
        The response payload as a dataset; ``None`` when the server sent none that parses.
    expected
        The SOP Instance UIDs that were sent.
    peer
        The destination's name, for the errors.
    where
        The service's address, for messages.
    http_status
        The response's HTTP status, for messages.

    Raises
    ------
    PeerUnreachable
        Every failed instance failed for lack of resources (0xA7xx): a retry may store it.
    PeerRejected
        Another failure reason (``status`` is the first), or instances neither stored nor failed.
    """
    failed = _failures(answer)
    if failed:
        permanent = [reason for reason in failed if reason not in _RETRYABLE_REASONS]
        reasons = ", ".join(f"0x{reason:04X}" for reason in sorted(set(failed)))
        message = (
            f"{where} answered HTTP {http_status} and refused {len(failed)} of "
            f"{max(len(expected), len(failed))} instance(s) (failure reason {reasons})"
        )
        if not permanent:
            raise PeerUnreachable(message, peer=peer)
        raise PeerRejected(message, peer=peer, status=permanent[0])
    stored = _referenced(answer)
    missing = expected - stored
    if missing:
        raise PeerRejected(
            f"{where} answered HTTP {http_status} without confirming {len(missing)} of "
            f"{len(expected)} instance(s) (not in its ReferencedSOPSequence)",
            peer=peer,
            status=0,
        )


def _failures(answer: Dataset | None) -> list[int]:
    """The FailureReason of each item of the FailedSOPSequence (0x0110 where none is given)."""
    if answer is None:
        return []
    reasons: list[int] = []
    for item in answer.get("FailedSOPSequence") or []:
        reason = item.get("FailureReason")
        reasons.append(int(reason) if isinstance(reason, int) else _PROCESSING_FAILURE)
    return reasons


def _referenced(answer: Dataset | None) -> set[str]:
    if answer is None:
        return set()
    return {
        str(item.ReferencedSOPInstanceUID)
        for item in answer.get("ReferencedSOPSequence") or []
        if "ReferencedSOPInstanceUID" in item
    }


def _is_stow_answer(parsed: Dataset) -> bool:
    return "ReferencedSOPSequence" in parsed or "FailedSOPSequence" in parsed


def _dicom_json(response: requests.Response | None) -> Dataset | None:
    """The response body as a dataset, when it is DICOM JSON (media type parameters allowed)."""
    if response is None or not response.content:
        return None
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type and media_type not in _JSON_TYPES:
        return None  # none at all is read as JSON: Orthanc sends its 409 answer without one
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, Mapping) or not all(_TAG_KEY.match(str(key)) for key in body):
        return None  # an error document of the server's own (e.g. Orthanc's), not a dataset
    try:
        return Dataset.from_json(dict(body))
    except (ValueError, TypeError, KeyError):
        return None


def _status(response: requests.Response | None) -> int:
    return response.status_code if response is not None else 0


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is among ``exc``'s causes, contexts or (as urllib3 wraps them) args."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        pending.extend([current.__cause__, current.__context__, *current.args])
        pending.append(getattr(current, "reason", None))
    return False


class _Session(requests.Session):
    """A session whose CA file is not overridden by ``REQUESTS_CA_BUNDLE`` in the environment.

    requests lets that variable win over ``Session.verify``; a destination's ``ca_certificates``
    must not lose to it.
    """

    def __init__(self, *, verify: Path | None) -> None:
        super().__init__()
        self._ca_file = str(verify) if verify is not None else None

    def merge_environment_settings(
        self,
        url: str,
        proxies: dict[str, str] | None,
        stream: bool | None,
        verify: Any,
        cert: Any,
    ) -> dict[str, Any]:
        """requests' merge, then this destination's CA file if it has one."""
        settings: dict[str, Any] = super().merge_environment_settings(
            url, proxies, stream, verify, cert
        )
        if self._ca_file is not None:
            settings["verify"] = self._ca_file
        return settings
