"""Every result kind the node produces is shown by a real viewer: OHIF in headless Chromium.

Orthanc (with DICOMweb) pushes the LIDC chest CT to the node; the node sends its SEG back; OHIF,
served from the same origin as Orthanc's DICOMweb, loads the study. The test asserts on OHIF's
segmentation service and on the viewport's pixels, and writes screenshots as test artefacts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from node.assembly.volume import load_volume
from node.pipelines.lung_seg import LUNG_SEGMENT
from tests.peers import Orthanc, RunningNode, start_node, start_orthanc, stop_process, wait_for
from tests.viewer.ohif import (
    ARTIFACTS,
    chromium,
    open_study,
    segmentation_labels,
    show_instance,
    tinted,
    viewer_server,
    viewport_pixels,
    world_to_canvas,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.viewer]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    peer = start_orthanc(tmp_path / "orthanc", dicomweb=True)
    yield peer
    stop_process(peer.process)


@pytest.fixture
def node(tmp_path: Path, orthanc: Orthanc) -> Iterator[RunningNode]:
    running = start_node(
        tmp_path / "node",
        destinations=orthanc.as_destination(),
    )
    yield running
    stop_process(running.process)


def _expected_on_screen(
    mask: npt.NDArray[np.bool_],
    source: pydicom.Dataset,
    canvas_of: list[tuple[float, float]],
    shape: tuple[int, int],
) -> npt.NDArray[np.bool_]:
    """Where ``mask`` should appear in a viewport screenshot of ``shape``, by the viewer's own
    world-to-canvas transform of three pixel centres: (0, 0), (0, C-1) and (R-1, 0)."""
    rows, columns = mask.shape
    origin = np.array(canvas_of[0])
    per_column = (np.array(canvas_of[1]) - origin) / (columns - 1)
    per_row = (np.array(canvas_of[2]) - origin) / (rows - 1)
    to_pixel = np.linalg.inv(np.stack([per_column, per_row], axis=1))
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    offsets = np.stack([xs + 0.5 - origin[0], ys + 0.5 - origin[1]], axis=-1)
    column_row = offsets @ to_pixel.T
    c = np.rint(column_row[..., 0]).astype(int)
    r = np.rint(column_row[..., 1]).astype(int)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < columns)
    expected = np.zeros(shape, dtype=bool)
    expected[inside] = mask[r[inside], c[inside]]
    return expected


def _pixel_centres(source: pydicom.Dataset) -> list[list[float]]:
    """Patient coordinates of pixel centres (0, 0), (0, C-1) and (R-1, 0) of a slice."""
    position = np.array([float(v) for v in source.ImagePositionPatient])
    cosines = np.array([float(v) for v in source.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    along_row, along_column = cosines[:3] * column_spacing, cosines[3:] * row_spacing
    return [
        position.tolist(),
        (position + along_row * (int(source.Columns) - 1)).tolist(),
        (position + along_column * (int(source.Rows) - 1)).tolist(),
    ]


def test_ohif_shows_the_lung_seg_on_its_source_slices(
    orthanc: Orthanc, node: RunningNode, lidc_dir: Path, tmp_path: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))
    series = orthanc.push_to_node(files, ae_title=node.ae_title, port=node.dicom_port)
    wait_for(
        lambda: bool(orthanc.seg_series(series["ParentStudy"])),
        timeout_s=240,
        interval_s=0.5,
        what=f"a SEG in Orthanc (node log: {node.log_path})",
    )
    [seg_series] = orthanc.seg_series(series["ParentStudy"])
    [seg_id] = seg_series["Instances"]
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(orthanc.request("GET", f"/instances/{seg_id}/file"))
    seg = hd.seg.segread(seg_path)

    volume = load_volume(files)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[
        ..., 0
    ].astype(bool)
    areas = masks.reshape(len(uids), -1).sum(axis=1)
    fullest, empty = int(np.argmax(areas)), int(np.flatnonzero(areas == 0)[0])
    # The node always sets a display colour (OHIF warns without one): the pipeline's lung green.
    assert len(seg.SegmentSequence[0].RecommendedDisplayCIELabValue) == 3
    segment_rgb = LUNG_SEGMENT.rgb

    with viewer_server(f"{orthanc.url}/dicom-web") as viewer_url, chromium() as browser:
        page = open_study(browser, viewer_url, str(volume.datasets[0].StudyInstanceUID))
        show_instance(page, uids[fullest])
        before = float(tinted(viewport_pixels(page, "seg-before.png"), segment_rgb).mean())

        page.get_by_text(str(seg.SeriesDescription)).dblclick()
        page.wait_for_function(
            "() => window.services.segmentationService.getSegmentations().length > 0",
            timeout=60_000,
        )
        assert segmentation_labels(page) == [str(seg.SeriesDescription)]

        show_instance(page, uids[fullest])
        # Software WebGL on a busy CI machine may take a while to draw the overlay: wait for it.
        deadline = time.monotonic() + 30
        shown = tinted(viewport_pixels(page), segment_rgb)
        while shown.mean() <= 0.05 and time.monotonic() < deadline:
            page.wait_for_timeout(500)
            shown = tinted(viewport_pixels(page), segment_rgb)
        page.wait_for_timeout(500)  # one more frame, then the picture the test judges
        shown = tinted(viewport_pixels(page, "seg-on-lung-slice.png"), segment_rgb)
        expected = _expected_on_screen(
            masks[fullest],
            volume.datasets[fullest],
            world_to_canvas(page, _pixel_centres(volume.datasets[fullest])),
            shown.shape,
        )
        dice = 2 * (shown & expected).sum() / (shown.sum() + expected.sum())

        show_instance(page, uids[empty])
        on_empty = float(
            tinted(viewport_pixels(page, "seg-on-empty-slice.png"), segment_rgb).mean()
        )

    metrics = {
        "before": before,
        "on_lung": float(shown.mean()),
        "dice_on_screen": float(dice),
        "on_empty": on_empty,
    }
    (ARTIFACTS / "seg-metrics.json").write_text(json.dumps(metrics, indent=2))
    assert before < 0.001, "green before the SEG was loaded"
    assert shown.mean() > 0.05, "no overlay on the slice that holds the most lung"
    assert dice >= 0.8, f"overlay not where the SEG says (Dice {dice:.3f} on screen)"
    assert on_empty < 0.001, "overlay on a slice without lung"
