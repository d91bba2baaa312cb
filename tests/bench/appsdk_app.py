"""The node's lung_seg job as a MONAI Deploy App SDK application, for the issue-6 comparison.

Run it with the App SDK's own environment (``python -m tests.bench.appsdk --install`` makes it
under ``.cache/bench/appsdk-venv``; the project's venv does not have the SDK)::

    .cache/bench/appsdk-venv/bin/python tests/bench/appsdk_app.py --input DIR --output DIR

The application is the App SDK's usual chain of operators:

1. ``DICOMDataLoaderOperator``: reads every file under ``--input`` into studies and series;
2. ``DICOMSeriesSelectorOperator``: selects the CT series;
3. ``DICOMSeriesToVolumeOperator``: sorts the slices and stacks them into a volume in HU;
4. :class:`LungSegInferenceOperator` (here): the node's lung_seg job on that volume, i.e. the
   same preprocessing, network and postprocessing as ``node.pipelines.lung_seg`` with the
   network built and loaded as ``node.backends.torch`` builds it (``network.json`` +
   ``model.pt``, which is a ``state_dict``, not TorchScript, so the SDK's TorchScript model
   loader is not used), in batches of 16 slices under ``torch.inference_mode()``;
5. ``DICOMSegmentationWriterOperator``: writes the DICOM SEG (highdicom), every frame kept as
   the node does.

The SDK's writer fails on series whose slices carry different FrameOfReferenceUIDs (the shared
LIDC CT does), so the benchmark runs it on copies with one Frame of Reference.

At the end it prints one JSON line: epoch seconds when ``main`` started (imports done) and when
each operator started and ended, so the caller can split the process's wall time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from holoscan.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Image, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import (
    DICOMSegmentationWriterOperator,
    SegmentDescription,
)
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.inference_operator import InferenceOperator
from pydicom.sr.coding import Code

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "model_repository" / "lung_seg" / "1"
#: Epoch seconds at which each operator's ``compute`` started and ended.
TIMES: dict[str, list[float]] = {}
SELECTION_RULES = json.dumps({"selections": [{"name": "CT", "conditions": {"Modality": "CT"}}]})


def import_lung_seg() -> types.ModuleType:
    """The node's ``node.pipelines.lung_seg`` (numpy and scipy only), importable here.

    ``node/backends/__init__.py`` imports every backend and the node's settings (pydantic,
    structlog, ...), which this environment lacks; lung_seg needs only ``node.backends.base``
    (a Protocol), so the ``node.backends`` package is registered without its initialiser.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    if "node.backends" not in sys.modules:
        package = types.ModuleType("node.backends")
        package.__path__ = [str(REPO_ROOT / "node" / "backends")]
        sys.modules["node.backends"] = package
    return importlib.import_module("node.pipelines.lung_seg")


def timed(operator: type[Operator]) -> type[Operator]:
    """``operator`` with the start and end of its ``compute`` recorded in :data:`TIMES`."""

    class Timed(operator):  # type: ignore[valid-type, misc]
        def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
            started = time.time()
            super().compute(op_input, op_output, context)
            TIMES[self.name] = [started, time.time()]

    Timed.__name__ = operator.__name__
    return Timed


class LungSegInferenceOperator(InferenceOperator):
    """The node's lung_seg pipeline as an App SDK inference operator.

    Named input ``image`` (the volume, slices x rows x columns in HU); named output
    ``seg_image`` (uint8, 1 = lung, same shape and metadata).
    """

    def __init__(
        self, fragment: Fragment, *args: Any, model_dir: Path, threads: int, **kwargs: Any
    ) -> None:
        self.model_dir = model_dir
        self.threads = threads
        self.lung_seg = import_lung_seg()
        self._network: torch.nn.Module | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """One input, one output."""
        spec.input("image")
        spec.output("seg_image")

    def network(self) -> torch.nn.Module:
        """The network, built and loaded as the node's embedded backend does, once."""
        if self._network is None:
            started = time.time()
            from monai.networks.nets.unet import UNet

            torch.set_num_threads(self.threads)
            description = json.loads((self.model_dir / "network.json").read_text())
            network = UNet(**description["kwargs"])
            state = torch.load(self.model_dir / "model.pt", map_location="cpu", weights_only=True)
            network.load_state_dict(state)
            self._network = network.eval()
            TIMES["model_load"] = [started, time.time()]
        return self._network

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Preprocess, infer, postprocess; emit the mask as an Image."""
        image = op_input.receive("image")
        inputs = self.pre_process(image)
        logits = self.predict(inputs)
        mask = self.post_process(logits, image)
        op_output.emit(Image(mask, image.metadata()), "seg_image")

    def pre_process(self, data: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        """HU window and resize, as the node does."""
        return self.lung_seg.preprocess(data.asnumpy())  # type: ignore[no-any-return]

    def predict(self, data: Any, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """The network on batches of ``BATCH_SIZE`` slices."""
        network = self.network()
        size = self.lung_seg.BATCH_SIZE
        outputs = []
        with torch.inference_mode():
            for start in range(0, data.shape[0], size):
                batch = torch.from_numpy(np.ascontiguousarray(data[start : start + size]))
                outputs.append(network(batch).numpy().astype(np.float32, copy=False))
        return outputs

    def post_process(self, data: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        """Back to the slices' size, threshold, components, holes, as the node does."""
        image = args[0]
        volume = image.asnumpy()
        metadata = image.metadata()
        masks = [self.lung_seg.logits_to_mask(logits, volume.shape[1:]) for logits in data]
        spacing = (float(metadata["row_pixel_spacing"]), float(metadata["col_pixel_spacing"]))
        mask = self.lung_seg.postprocess(np.concatenate(masks), spacing)
        return mask.astype(np.uint8)  # type: ignore[no-any-return]


class LungSegApp(Application):  # type: ignore[misc]
    """DICOM loader, CT selector, series to volume, lung_seg, DICOM SEG writer."""

    input_dir: Path
    output_dir: Path
    threads: int

    def compose(self) -> None:
        """Wire the operators."""
        loader = timed(DICOMDataLoaderOperator)(
            self, CountCondition(self, 1), input_folder=self.input_dir, name="loader"
        )
        selector = timed(DICOMSeriesSelectorOperator)(self, rules=SELECTION_RULES, name="selector")
        to_volume = timed(DICOMSeriesToVolumeOperator)(self, name="to_volume")
        infer = timed(LungSegInferenceOperator)(
            self, model_dir=MODEL_DIR, threads=self.threads, name="lung_seg"
        )
        lung = SegmentDescription(
            segment_label="Lung",
            segmented_property_category=Code("123037004", "SCT", "Anatomical Structure"),
            segmented_property_type=Code("39607008", "SCT", "Lung"),
            algorithm_name="lung_seg",
            algorithm_version="1",
        )
        writer = timed(DICOMSegmentationWriterOperator)(
            self,
            segment_descriptions=[lung],
            output_folder=self.output_dir,
            omit_empty_frames=False,
            name="seg_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(
            selector, to_volume, {("study_selected_series_list", "study_selected_series_list")}
        )
        self.add_flow(to_volume, infer, {("image", "image")})
        self.add_flow(
            selector, writer, {("study_selected_series_list", "study_selected_series_list")}
        )
        self.add_flow(infer, writer, {("seg_image", "seg_image")})


def main() -> None:
    """Run the application once on ``--input``; print the timings as JSON."""
    imported = time.time()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    app = LungSegApp([sys.argv[0]])
    app.input_dir, app.output_dir, app.threads = args.input, args.output, args.threads
    app.run()
    print(json.dumps({"imported": imported, "operators": TIMES, "finished": time.time()}))


if __name__ == "__main__":
    main()
