"""Forward the series a PACS administrator selects from Orthanc to the pacs-ai-node.

A script for Orthanc's Python plugin (Debian package ``orthanc-python``; it runs inside Orthanc
with Debian's Python 3 and the standard library only). When Orthanc considers a series stable
(no new instance for ``StableAge`` seconds), the series is sent by C-STORE to the node, declared
in ``DicomModalities``, if it matches one of the selectors of the ``PacsAiNode`` configuration
section::

    "PacsAiNode": {
      "NodeModality": "ainode",
      "Selectors": [{"Modality": "CT", "BodyPartExamined": ["CHEST", "LUNG", "THORAX"]}],
      "Retries": 2,
      "RetryDelaySeconds": 60
    }

A selector matches a series when every key it names matches: ``Modality`` (required) by exact
code, ``BodyPartExamined`` and ``SeriesDescription`` by shell-style patterns (``*LUNG*``), all
without regard to case; a list means any of its values. Results never go back to the node: the
result modalities (SEG, SR, PR, KO) cannot be selected, and a series whose instances the node's
AE title sent is skipped.

Each forward is an asynchronous Orthanc job (``POST /modalities/{id}/store``), so the change
callback never waits for the network. A failed job (node down) is logged, stays visible in
Orthanc's job list as failed, and is submitted again as a new job after ``RetryDelaySeconds``, at
most ``Retries`` times. Logs name series and jobs by their Orthanc IDs only, never by patient data
or DICOM UIDs.

A bad ``PacsAiNode`` section is reported at start by one error line naming the key, and then
nothing is forwarded; Orthanc itself keeps running and storing.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass
from typing import Any

import orthanc

SECTION = "PacsAiNode"
PATTERN_KEYS = ("BodyPartExamined", "SeriesDescription")
RESULT_MODALITIES = frozenset({"SEG", "SR", "PR", "KO"})
MAX_RETRIES = 10


class ConfigError(ValueError):
    """The ``PacsAiNode`` section is invalid; the message names the key."""


@dataclass(frozen=True)
class Selector:
    """One selection rule: the allowed values of each tag it names (upper case)."""

    modalities: tuple[str, ...]
    patterns: dict[str, tuple[str, ...]]

    def matches(self, tags: dict[str, str]) -> bool:
        """Whether a series with these main DICOM tags is selected by this rule."""
        if tags.get("Modality", "").strip().upper() not in self.modalities:
            return False
        for key, patterns in self.patterns.items():
            value = tags.get(key, "").strip().upper()
            if not any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns):
                return False
        return True


@dataclass(frozen=True)
class Routing:
    """The validated ``PacsAiNode`` section."""

    node_modality: str
    selectors: tuple[Selector, ...]
    retries: int
    retry_delay_s: float


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """A string or a non-empty list of non-empty strings, upper-cased."""
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v.strip() for v in values)
    ):
        raise ConfigError(f"{where}: expected a string or a list of strings, got {value!r}")
    return tuple(v.strip().upper() for v in values)


def _selector(raw: Any, where: str) -> Selector:
    """Validate one entry of ``Selectors``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {raw!r}")
    unknown = sorted(set(raw) - {"Modality", *PATTERN_KEYS})
    if unknown:
        known = ", ".join(("Modality", *PATTERN_KEYS))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {known})")
    if "Modality" not in raw:
        raise ConfigError(f"{where}: 'Modality' is required (e.g. \"CT\")")
    modalities = _strings(raw["Modality"], f"{where}.Modality")
    results = sorted(RESULT_MODALITIES.intersection(modalities))
    if results:
        raise ConfigError(
            f"{where}.Modality: {', '.join(results)} are results of the node, never forwarded"
        )
    patterns = {key: _strings(raw[key], f"{where}.{key}") for key in PATTERN_KEYS if key in raw}
    return Selector(modalities, patterns)


def parse_routing(config: dict[str, Any]) -> Routing:
    """Validate the ``PacsAiNode`` section of Orthanc's whole configuration.

    Raises
    ------
    ConfigError
        When the section is missing or any key in it is invalid or unknown.
    """
    section = config.get(SECTION)
    if not isinstance(section, dict):
        raise ConfigError(f"the configuration has no {SECTION!r} object")
    unknown = sorted(set(section) - {"NodeModality", "Selectors", "Retries", "RetryDelaySeconds"})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}")
    node = section.get("NodeModality")
    if not isinstance(node, str) or not node:
        raise ConfigError("NodeModality: expected the name of the node's DicomModalities entry")
    raw_selectors = section.get("Selectors")
    if not isinstance(raw_selectors, list) or not raw_selectors:
        raise ConfigError("Selectors: expected a non-empty list of selector objects")
    selectors = tuple(_selector(s, f"Selectors[{i}]") for i, s in enumerate(raw_selectors))
    retries = section.get("Retries", 2)
    if type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
        raise ConfigError(f"Retries: expected a whole number from 0 to {MAX_RETRIES}")
    delay = section.get("RetryDelaySeconds", 60)
    if type(delay) not in (int, float) or not 0 < delay <= 3600:
        raise ConfigError("RetryDelaySeconds: expected a number of seconds above 0, at most 3600")
    return Routing(node, selectors, retries, float(delay))


def _get(uri: str) -> Any:
    """GET a path of Orthanc's own REST API, decoded from JSON."""
    return json.loads(orthanc.RestApiGet(uri))


class Router:
    """Reacts to Orthanc's changes: forwards stable selected series, retries failed forwards."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self._lock = threading.Lock()
        self._forwards: dict[str, tuple[str, int]] = {}  # job ID -> (series ID, attempt)
        self._timers: list[threading.Timer] = []

    def on_change(self, change_type: int, _level: int, resource_id: str) -> None:
        """The ``RegisterOnChangeCallback`` callback; never raises into Orthanc."""
        try:
            if change_type == orthanc.ChangeType.STABLE_SERIES:
                self.on_stable_series(resource_id)
            elif change_type in (orthanc.ChangeType.JOB_SUCCESS, orthanc.ChangeType.JOB_FAILURE):
                self.on_job_end(resource_id, change_type == orthanc.ChangeType.JOB_SUCCESS)
            elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
                self.check_node()
            elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
                self.stop()
        except Exception as error:  # a routing error must not disturb Orthanc
            orthanc.LogError(f"{SECTION}: {type(error).__name__} on change {change_type}: {error}")

    def node_ae_title(self) -> str | None:
        """The AE title of the node's DicomModalities entry, or None when it is not declared."""
        entry = _get("/modalities?expand").get(self.routing.node_modality)
        return entry["AET"] if entry else None

    def check_node(self) -> None:
        """Log, once Orthanc has started, where series go (or that the node is not declared)."""
        name = self.routing.node_modality
        ae_title = self.node_ae_title()
        if ae_title is None:
            orthanc.LogError(
                f"{SECTION}: NodeModality {name!r} is not declared in DicomModalities; "
                "nothing is forwarded until it is"
            )
            return
        orthanc.LogWarning(
            f"{SECTION}: forwarding stable series to {name!r} (AE {ae_title}) when they match "
            f"one of {len(self.routing.selectors)} selector(s)"
        )

    def on_stable_series(self, series_id: str) -> None:
        """Forward the stable series ``series_id`` if a selector matches it."""
        series = _get(f"/series/{series_id}")
        tags = series.get("MainDicomTags", {})
        selected = [i for i, s in enumerate(self.routing.selectors) if s.matches(tags)]
        if not selected:
            orthanc.LogInfo(f"{SECTION}: series {series_id} is not selected")
            return
        node_ae_title = self.node_ae_title()
        if node_ae_title is None:
            orthanc.LogError(
                f"{SECTION}: series {series_id} is selected but NodeModality "
                f"{self.routing.node_modality!r} is not declared in DicomModalities"
            )
            return
        if self._sent_by(series["Instances"][0]) == node_ae_title:
            orthanc.LogWarning(f"{SECTION}: series {series_id} came from the node; not sent back")
            return
        self.submit(series_id, attempt=1, selector=selected[0])

    @staticmethod
    def _sent_by(instance_id: str) -> str:
        """The calling AE title that stored this instance by DICOM ('' if it came otherwise)."""
        try:
            value: bytes = orthanc.RestApiGet(f"/instances/{instance_id}/metadata/RemoteAET")
        except orthanc.OrthancException:  # no such metadata: uploaded over REST or by a plugin
            return ""
        return value.decode()

    def submit(self, series_id: str, *, attempt: int, selector: int | None = None) -> None:
        """Start an asynchronous C-STORE job of the series to the node, and remember it."""
        body = {"Resources": [series_id], "Asynchronous": True, "Permissive": False}
        uri = f"/modalities/{self.routing.node_modality}/store"
        with self._lock:  # held until recorded, so that the job's end is never missed
            job_id = json.loads(orthanc.RestApiPost(uri, json.dumps(body)))["ID"]
            self._forwards[job_id] = (series_id, attempt)
        why = f"matched Selectors[{selector}]" if selector is not None else f"attempt {attempt}"
        orthanc.LogWarning(
            f"{SECTION}: forwarding series {series_id} to {self.routing.node_modality!r} "
            f"({why}) as job {job_id}"
        )

    def on_job_end(self, job_id: str, succeeded: bool) -> None:
        """Log the end of a forwarding job; schedule a new attempt after a failure."""
        with self._lock:
            forward = self._forwards.pop(job_id, None)
        if forward is None:  # not one of ours
            return
        series_id, attempt = forward
        node = self.routing.node_modality
        if succeeded:
            orthanc.LogWarning(f"{SECTION}: series {series_id} sent to {node!r} (job {job_id})")
            return
        job = _get(f"/jobs/{job_id}")
        error = job.get("ErrorDetails") or job.get("ErrorDescription", "unknown error")
        failed = f"{SECTION}: job {job_id} sending series {series_id} to {node!r} failed: {error}"
        if attempt > self.routing.retries:
            orthanc.LogError(f"{failed}; gave up after {attempt} attempt(s)")
            return
        delay = self.routing.retry_delay_s
        orthanc.LogWarning(f"{failed}; retry {attempt} of {self.routing.retries} in {delay:g} s")
        timer = threading.Timer(delay, self._retry, args=(series_id, attempt + 1))
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _retry(self, series_id: str, attempt: int) -> None:
        """Submit the series again (runs on a timer thread)."""
        try:
            self.submit(series_id, attempt=attempt)
        except Exception as error:  # log it: there is no caller to tell
            orthanc.LogError(f"{SECTION}: could not resubmit series {series_id}: {error}")

    def stop(self) -> None:
        """Cancel the pending retries (Orthanc is stopping)."""
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()


def install() -> None:
    """Validate the configuration and register the change callback (or log why not)."""
    try:
        routing = parse_routing(json.loads(orthanc.GetConfiguration()))
    except ConfigError as error:
        orthanc.LogError(f"{SECTION}: invalid configuration, nothing will be forwarded: {error}")
        return
    orthanc.RegisterOnChangeCallback(Router(routing).on_change)


install()
