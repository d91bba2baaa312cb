"""The HTTP API: health and the job queue, read-only, as JSON. A thin shell over the services."""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from sqlalchemy import text

from node.jobs.queue import get_job, list_jobs
from node.logging import short_uid
from node.store.database import Database
from node.store.models import Job, JobState

__all__ = ["HttpServer", "create_app"]


def _job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "rule": job.rule_name,
        "pipeline": job.pipeline,
        "model": job.model,
        "version": job.version,
        "series": short_uid(job.series.series_instance_uid),
        "attempts": job.attempts,
        "reason": job.reason,
        "updated_at": job.updated_at.isoformat(),
    }


def create_app(db: Database) -> FastAPI:
    """The ASGI application over the index ``db``."""
    app = FastAPI(title="pacs-ai-node", docs_url=None, redoc_url=None)

    @app.get("/health")
    def health() -> dict[str, str]:
        """200 while the index answers; 503 otherwise."""
        try:
            with db.session() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            raise HTTPException(status_code=503, detail="index unavailable") from exc
        return {"status": "ok"}

    @app.get("/jobs")
    def jobs(state: JobState | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return [_job_summary(job) for job in list_jobs(db, state=state, limit=min(limit, 1000))]

    @app.get("/jobs/{job_id}")
    def job(job_id: int) -> dict[str, Any]:
        """One job with its results, deliveries and history."""
        found = get_job(db, job_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return {
            **_job_summary(found),
            "results": list(found.result_paths),
            "deliveries": [
                {
                    "destination": d.destination,
                    "attempts": d.attempts,
                    "confirmed_at": d.confirmed_at.isoformat() if d.confirmed_at else None,
                }
                for d in found.deliveries
            ],
            "history": [
                {"at": e.at.isoformat(), "state": e.state.value, "message": e.message}
                for e in found.events
            ],
        }

    return app


class HttpServer:
    """Runs the API with uvicorn in a background thread."""

    def __init__(self, db: Database, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            create_app(db), host=host, port=port, log_config=None, access_log=False
        )
        self._host, self._port = host, port
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (raising ``OSError`` here if the port is taken), then serve in a thread."""
        sock = socket.create_server((self._host, self._port), reuse_port=False)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
