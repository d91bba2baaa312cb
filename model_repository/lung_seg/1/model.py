"""lung_seg under Triton's Python backend: the same network and weights the embedded backend runs.

Triton loads this file; it reads ``network.json`` and the weights beside it, exactly as the node's
embedded backend does in the node's own process (``node/backends/torch.py`` for a MONAI
``state_dict`` in ``model.pt``; ``node/backends/embedded.py`` for a TorchScript ``model.ts`` or
an ONNX ``model.onnx`` when ``network.json`` says ``"format": "torchscript"`` or ``"onnx"``;
ONNX runs through onnxruntime, which must then be installed in Triton's Python environment), so
both backends give the same numbers. ``pacs-ai-node models add`` copies this file into every
version it imports. It needs torch and MONAI in the Python environment the backend's stub runs (see
``deploy/triton/README.md``) and nothing from the node.

Each instance runs on the device Triton gives it: ``cuda:<id>`` for a GPU instance, the CPU
otherwise (and on the CPU when torch sees no CUDA device). With dynamic batching, Triton may hand
:meth:`TritonPythonModel.execute` several requests at once; they are run as one batch, in slices of
at most ``max_batch_size`` items, and split again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by the Python backend's stub

NETWORK_FILE = "network.json"
WEIGHTS_FILE = "model.pt"
TORCHSCRIPT_FILE = "model.ts"
ONNX_FILE = "model.onnx"
#: Architectures ``network.json`` may name; nothing else is ever imported from it.
ARCHITECTURES = frozenset({"monai.networks.nets.UNet"})


#: Largest pass through the network on the CPU.
CPU_MAX_BATCH = 4


class TritonPythonModel:
    """The Python-backend model: a MONAI network built from ``network.json``."""

    def initialize(self, args: dict[str, str]) -> None:
        """Build the network, load its weights and move it to this instance's device.

        Parameters
        ----------
        args
            Triton's arguments: ``model_config`` (JSON), ``model_repository`` (this model's
            folder), ``model_version``, ``model_instance_kind``, ``model_instance_device_id``.
        """
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        description = json.loads((folder / NETWORK_FILE).read_text(encoding="utf-8"))
        fmt = description.get("format", "monai-state-dict")
        self.session = None
        network = None
        if fmt == "onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(
                str(folder / ONNX_FILE), providers=["CPUExecutionProvider"]
            )
        elif fmt == "torchscript":
            network = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location="cpu")
        elif fmt == "monai-state-dict":
            architecture = description["architecture"]
            if architecture not in ARCHITECTURES:
                raise pb_utils.TritonModelException(f"architecture {architecture!r} not supported")
            from monai.networks.nets.unet import UNet

            network = UNet(**description["kwargs"])
            state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        else:
            raise pb_utils.TritonModelException(f"format {fmt!r} not supported")
        self.device = _device(args.get("model_instance_kind", "CPU"), args)
        self.network = None if network is None else network.to(self.device).eval()
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.max_batch = max(int(config.get("max_batch_size", 0)), 1)
        if self.device.type == "cpu":
            # Smaller passes on the CPU: as fast per item and lighter (the embedded backend's
            # default too, node.backends.torch.CPU_MAX_BATCH).
            self.max_batch = min(self.max_batch, CPU_MAX_BATCH)
        threads = config.get("parameters", {}).get("torch_threads", {}).get("string_value")
        if threads:
            torch.set_num_threads(int(threads))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run every request's batch through the network in one pass; one response each.

        Parameters
        ----------
        requests
            ``pb_utils.InferenceRequest`` objects, each with the input batched on axis 0.

        Returns
        -------
        list
            One ``pb_utils.InferenceResponse`` per request, in order.
        """
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        sizes = [a.shape[0] for a in arrays]
        batch = np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32)
        chunks = [
            self._forward(batch[start : start + self.max_batch])
            for start in range(0, batch.shape[0], self.max_batch)
        ]
        outputs = np.concatenate(chunks).astype(np.float32, copy=False)
        responses = []
        offset = 0
        for size in sizes:
            tensor = pb_utils.Tensor(self.output_name, outputs[offset : offset + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            offset += size
        return responses

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """One batch through the ONNX session or the torch network."""
        if self.session is not None:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        with torch.inference_mode():
            tensor = torch.from_numpy(batch).to(self.device)
            return self.network(tensor).detach().to("cpu").numpy()

    def finalize(self) -> None:
        """Release the network (and its GPU memory)."""
        self.network = None
        self.session = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _device(kind: str, args: dict[str, str]) -> torch.device:
    """``cuda:<id>`` for a GPU instance when torch sees CUDA, the CPU otherwise."""
    if kind == "GPU" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(args.get('model_instance_device_id', '0'))}")
    return torch.device("cpu")
