"""The HTTP API: health, the job queue (read-only, JSON) and STOW-RS; a thin shell over services.

With an API token set, every request but ``GET /health`` must carry ``Authorization: Bearer
<token>``; others get ``401`` as ``application/problem+json``. The comparison takes the same time
whatever the token sent, and neither the token nor any request header is ever logged.
"""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy import text

from node.ingest.dicomweb import StowService
from node.jobs.queue import get_job, list_jobs
from node.logging import get_logger, short_uid
from node.store.database import Database
from node.store.models import Job, JobState

__all__ = ["OPEN_PATHS", "HttpServer", "create_app"]

#: Paths served without a token (a load balancer's or orchestrator's health probe).
OPEN_PATHS = frozenset({"/health"})

log = get_logger(__name__)


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
        "refused": job.refused,
        "explain": job.explain,
        "shadow_version": job.shadow_version,
        "shadow": job.shadow_result,
        "updated_at": job.updated_at.isoformat(),
    }


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": detail},
        status_code=401,
        media_type="application/problem+json",
        headers={"WWW-Authenticate": 'Bearer realm="pacs-ai-node"'},
    )


def _bearer_token(request: Request) -> bytes | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode("utf-8", "surrogateescape")


def create_app(
    db: Database, *, api_token: SecretStr | None = None, stow: StowService | None = None
) -> FastAPI:
    """The ASGI application over the index ``db``; with ``api_token``, requests need it.

    With ``stow``, it serves STOW-RS at ``/dicomweb/studies[/{StudyInstanceUID}]``.
    """
    app = FastAPI(title="pacs-ai-node", docs_url=None, redoc_url=None)

    if api_token is not None:
        expected = api_token.get_secret_value().encode("utf-8")

        @app.middleware("http")
        async def require_token(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            # A middleware, not a per-route dependency: routes added later, and unknown paths,
            # are closed too.
            if request.url.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
                return await call_next(request)
            presented = _bearer_token(request)
            if presented is None:
                return _unauthorized("this API needs an Authorization: Bearer token")
            if not hmac.compare_digest(presented, expected):
                return _unauthorized("the bearer token is not valid")
            return await call_next(request)

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

    if stow is not None:

        @app.post("/dicomweb/studies")
        async def store_instances(request: Request) -> Response:
            """STOW-RS: store the instances of a multipart/related body."""
            return await stow.handle(request, None)

        @app.post("/dicomweb/studies/{study_instance_uid}")
        async def store_study_instances(request: Request, study_instance_uid: str) -> Response:
            """STOW-RS into one study: instances of another study are refused, one by one."""
            return await stow.handle(request, study_instance_uid)

    return app


class HttpServer:
    """Runs the API with uvicorn in a background thread."""

    def __init__(
        self,
        db: Database,
        *,
        host: str,
        port: int,
        api_token: SecretStr | None = None,
        stow: StowService | None = None,
    ) -> None:
        config = uvicorn.Config(
            create_app(db, api_token=api_token, stow=stow),
            host=host,
            port=port,
            log_config=None,
            access_log=False,  # request lines and headers are never logged
        )
        self._host, self._port = host, port
        self._is_open = api_token is None
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (raising ``OSError`` here if the port is taken), then serve in a thread."""
        sock = socket.create_server((self._host, self._port), reuse_port=False)
        if self._is_open:
            log.warning(
                "api.open",
                http_port=self._port,
                reason="no api_token set: anyone who reaches this port can read the job list "
                "and store instances by STOW-RS",
            )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
