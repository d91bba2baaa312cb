"""Serve the prebuilt OHIF viewer and Orthanc's DICOMweb API from one origin.

Orthanc 1.10 sends no CORS headers, so the viewer must reach DICOMweb on its own origin: this
server hands out OHIF's static files (``index.html`` for any viewer route), replaces OHIF's
``app-config.js`` with one whose only data source is ``/dicom-web``, and forwards ``/dicom-web/*``
to the PACS. It is for demos and tests on one machine, not a production deployment.

Usage::

    python deploy/viewer/server.py --dist .cache/ohif/package/dist \\
        --dicomweb http://127.0.0.1:8042/dicom-web --port 3000
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

#: Request headers passed on to the PACS; everything else (cookies, host) stays here.
_FORWARDED_REQUEST_HEADERS = ("accept", "content-type", "range")
#: Response headers passed back to the browser.
_FORWARDED_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-range",
    "content-encoding",
)


def app_config(dicomweb_root: str = "/dicom-web") -> str:
    """OHIF's ``window.config``: one DICOMweb data source on this origin, no prompts."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "pacs",
        "configuration": {
            "friendlyName": "PACS (Orthanc DICOMweb)",
            "name": "pacs",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": False,
        "disableConfirmationPrompts": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "pacs",
        "dataSources": [source],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


def create_app(dist: Path, dicomweb: str) -> Starlette:
    """The ASGI app: OHIF from ``dist``, ``/dicom-web`` forwarded to ``dicomweb``."""
    index = dist / "index.html"
    if not index.is_file():
        raise SystemExit(f"no OHIF build at {dist} (expected index.html): run `make viewer-deps`")
    client = httpx.AsyncClient(base_url=dicomweb.rstrip("/"), timeout=120)

    async def config(_: Request) -> Response:
        return Response(app_config(), media_type="application/javascript")

    async def proxy(request: Request) -> Response:
        path = request.path_params["path"]
        upstream = client.build_request(
            request.method,
            "/" + path,
            params=request.query_params,
            headers={k: v for k, v in request.headers.items() if k in _FORWARDED_REQUEST_HEADERS},
            content=await request.body(),
        )
        response = await client.send(upstream, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k in _FORWARDED_RESPONSE_HEADERS},
            background=BackgroundTask(response.aclose),
        )

    static = StaticFiles(directory=dist)

    async def files(request: Request) -> Response:
        path = request.path_params["path"]
        candidate = (dist / path).resolve()
        if path and candidate.is_file() and dist.resolve() in candidate.parents:
            return await static.get_response(path, request.scope)
        return FileResponse(index)  # the viewer's own routes (/viewer, /segmentation, ...)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/app-config.js", config),
            Route("/dicom-web/{path:path}", proxy, methods=["GET", "POST"]),
            Route("/{path:path}", files),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, required=True, help="OHIF's package/dist folder")
    parser.add_argument("--dicomweb", required=True, help="the PACS's DICOMweb root URL")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=3000, help="port to listen on")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.dist, args.dicomweb), host=args.host, port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
