"""``make demo``: a PACS (Orthanc with DICOMweb), the node and the OHIF viewer on this machine,
with the shipped sample chest CT sent through; prints the viewer URL where the SEG is visible.

Orthanc pushes the series to the node as a PACS routing rule would; the node sends its SEG back.
Everything runs on 127.0.0.1 under ``var/demo/`` and stops on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
from pathlib import Path

from tests.paths import shared_data_root
from tests.peers import (
    REPO_ROOT,
    Orthanc,
    free_port,
    port_open,
    start_node,
    start_orthanc,
    stop_process,
    wait_for,
)
from tests.viewer.ohif import viewer_server

SAMPLE = Path("fnndsc-data") / "LIDC-IDRI-0314_CT_chest_every5th_slice"


def _port(preferred: int) -> int:
    """``preferred`` when it is free, another free port otherwise."""
    return free_port() if port_open(preferred) else preferred


def main() -> None:
    """Start everything, send the sample through, print the URL, wait for Ctrl-C."""
    sample = shared_data_root() / SAMPLE
    if not sample.is_dir():
        sys.exit(f"sample series not found at {sample}: set PACS_AI_NODE_TEST_DATA (see README)")
    workdir = REPO_ROOT / "var" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    print("starting Orthanc (the PACS) ...", flush=True)
    orthanc = start_orthanc(
        workdir / "orthanc", dicomweb=True, http_port=_port(8042), dicom_port=_port(4242)
    )
    try:
        print("starting the node ...", flush=True)
        node = start_node(
            workdir / "node",
            dicom_port=_port(11112),
            http_port=_port(8080),
            destinations=orthanc.as_destination(),
        )
        try:
            with viewer_server(f"{orthanc.url}/dicom-web", port=_port(3000)) as viewer_url:
                _send_sample(orthanc, node.ae_title, node.dicom_port, sample, viewer_url)
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                with contextlib.suppress(KeyboardInterrupt):
                    stop.wait()
        finally:
            stop_process(node.process)
    finally:
        stop_process(orthanc.process)
        print("stopped", flush=True)


def _send_sample(orthanc: Orthanc, ae_title: str, port: int, sample: Path, viewer_url: str) -> None:
    files = sorted(sample.glob("*.dcm"))
    print(
        f"uploading {len(files)} instances to Orthanc and pushing them to the node ...", flush=True
    )
    series = orthanc.push_to_node(files, ae_title=ae_title, port=port)
    wait_for(
        lambda: bool(orthanc.seg_series(series["ParentStudy"])),
        timeout_s=300,
        interval_s=0.5,
        what="the node's SEG in Orthanc",
    )
    study = orthanc.request("GET", f"/studies/{series['ParentStudy']}")
    study_uid = study["MainDicomTags"]["StudyInstanceUID"]
    print(
        "\nThe SEG is back in the PACS. Open the viewer and double-click the series "
        '"AI lung_seg v1":\n'
        f"  {viewer_url}/viewer?StudyInstanceUIDs={study_uid}\n"
        f"Orthanc: {orthanc.url}   Ctrl-C stops everything.\n",
        flush=True,
    )


if __name__ == "__main__":
    main()
