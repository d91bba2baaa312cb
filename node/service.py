"""The running node: wires the stages together from the settings, starts and stops them."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from node.api.app import HttpServer
from node.assembly.watcher import CompletenessWatcher
from node.backends.registry import build_backend
from node.config import Settings
from node.errors import ConfigError
from node.export.registry import build_exporters
from node.ingest.dicomweb import StowService
from node.ingest.durable import InstanceStore
from node.ingest.receivers import dicom_receivers
from node.jobs.queue import recover_jobs
from node.jobs.runner import ExportRetry, JobRunner
from node.jobs.workers import WorkerPool
from node.logging import get_logger
from node.models.repository import ModelRepository
from node.pipelines.registry import PIPELINES
from node.routing.dispatch import Dispatcher
from node.routing.rules import RuleSet, load_rules
from node.store.database import Database
from node.store.index import recover_associations
from node.store.spool import Spool

__all__ = ["Node", "check_rules_against_settings"]

log = get_logger(__name__)


def check_rules_against_settings(rules: RuleSet, settings: Settings) -> None:
    """Every model card is valid; every rule names a known pipeline, a model version that exists
    (pinned, or the promoted one) whose card names that pipeline, and known destinations.

    Raises
    ------
    ConfigError
        Naming the rule and what it refers to that does not exist, or (a
        :class:`~node.models.card.ModelCardError`) the card file and field that is invalid.
    """
    repository = ModelRepository(settings.model_repository)
    repository.validate()
    for rule in rules.rules:
        if rule.pipeline not in PIPELINES:
            raise ConfigError(
                f"rule {rule.name!r}: unknown pipeline {rule.pipeline!r}", key="rules_file"
            )
        for version in rule.versions_named():
            try:
                resolved = repository.resolve(rule.model, version)
            except ConfigError as exc:
                raise ConfigError(f"rule {rule.name!r}: {exc}", key="rules_file") from exc
            card = repository.card(rule.model, resolved)
            if card.pipeline != rule.pipeline:
                raise ConfigError(
                    f"rule {rule.name!r}: model {rule.model!r} version {resolved!r} is for "
                    f"pipeline {card.pipeline!r}, not {rule.pipeline!r}",
                    key="rules_file",
                )
        for destination in rule.destinations:
            if destination not in settings.destinations:
                raise ConfigError(
                    f"rule {rule.name!r}: destination {destination!r} is not configured",
                    key="destinations",
                )


class Node:
    """One node process: listener, completeness watcher and workers over one spool and index."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = load_rules(settings.rules_file)
        check_rules_against_settings(self.rules, settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(settings.data_dir / "spool")
        self.db = Database(settings.index_url)
        self.db.create_schema()
        # C-STORE: in `receivers` processes (or this one); STOW-RS: here, on the same durable path.
        self.listener = dicom_receivers(settings, self.spool, self.db)
        self.store = InstanceStore(
            self.spool,
            self.db,
            max_image_pixels=settings.max_image_pixels,
            min_free_disk_bytes=settings.min_free_disk_mb * 1024 * 1024,
        )
        self.models = ModelRepository(settings.model_repository)
        self.watcher = CompletenessWatcher(
            self.db,
            Dispatcher(self.rules, self.models),
            quiet_period_s=settings.quiet_period_s,
            on_handed=lambda: self.workers.wake(),
        )
        backend = build_backend(settings)
        runner = JobRunner(
            db=self.db,
            spool=self.spool,
            backend=backend,
            exporters=build_exporters(settings),
            retry=ExportRetry(
                max_attempts=settings.export.max_attempts,
                backoff_initial_s=settings.export.backoff_initial_s,
                backoff_max_s=settings.export.backoff_max_s,
            ),
            series_number=settings.series_number,
            models=self.models,
        )
        self.workers = WorkerPool(self.db, runner, size=settings.workers)
        self.http = HttpServer(
            self.db,
            host=settings.bind_address,
            port=settings.http_port,
            api_token=settings.api_token,
            stow=StowService(self.store),
        )
        self._stopped = threading.Event()

    def start(self) -> None:
        """Recover what a previous process left, then start every stage."""
        temporaries = self.spool.remove_temporaries()
        associations = recover_associations(self.db)
        jobs = recover_jobs(self.db)
        log.info(
            "node.recovered",
            recovered={"temporary_files": temporaries, "associations": associations, "jobs": jobs},
        )
        self.listener.start()  # binding first: a taken port fails before any work starts
        self.http.start()
        if self.settings.min_free_disk_mb == 0:
            log.warning("ingest.disk_check_off", reason="min_free_disk_mb is 0")
        self.watcher.start()
        self.workers.start()
        log.info("node.started", ae_title=self.settings.ae_title, port=self.listener.port)

    def stop(self) -> None:
        """Stop accepting, finish current work, and close the index."""
        self.http.stop()
        self.listener.stop()
        self.watcher.stop()
        self.workers.stop()
        self.db.dispose()
        self._stopped.set()
        log.info("node.stopped")

    def serve_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM, then stop cleanly."""

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("node.stopping", reason=signal.Signals(signum).name)
            self._stopped.set()

        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        self.start()
        self._stopped.wait()
        self.stop()
