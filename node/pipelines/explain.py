"""Explanations by occlusion sensitivity (MONAI's :class:`monai.visualize.OcclusionSensitivity`).

A region matters to a decision when hiding it changes the decision. MONAI slides a smooth
(Gaussian) mask over the image, runs the model on each occluded copy and records its score;
here the heat map is the score's relative drop, ``clip((baseline - occluded) / baseline, 0,
1)``: 1 where hiding the region removes the decision, 0 where it changes nothing.

Occlusion needs only the model's outputs, not its gradients or layers, so it works through any
backend (embedded torch, TorchScript, ONNX, Triton): the scoring function here calls
``backend.infer``. (Grad-CAM would need the network's layers in this process.) torch and MONAI
are imported on first use.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import PipelineError

__all__ = ["Scorer", "occlusion_heat_map"]

#: Scores of a batch ``(batch, channels, rows, columns)`` → ``(batch, classes)``.
Scorer = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


def occlusion_heat_map(
    score: Scorer,
    image: npt.NDArray[np.float32],
    *,
    target: int,
    mask_size: int,
    box: tuple[int, int, int, int] | None = None,
    batch: int = 16,
) -> npt.NDArray[np.float32]:
    """Occlusion sensitivity of ``score[:, target]`` on one 2D image.

    Parameters
    ----------
    score
        The model's scores (probabilities, not logits) of a batch of images.
    image
        ``(channels, rows, columns)`` float32, as the model takes it.
    target
        The score (class) explained.
    mask_size
        Side of the occluding mask (pixels).
    box
        ``(row_min, row_max, column_min, column_max)``, inclusive: occlude only there (faster);
        the whole image by default.
    batch
        Occluded copies scored per call.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` float32 in ``[0, 1]``; 0 outside ``box``.

    Raises
    ------
    PipelineError
        If torch or MONAI is not installed, or the baseline score is not positive.
    """
    try:
        import torch
        from monai.visualize.occlusion_sensitivity import OcclusionSensitivity
    except ImportError as exc:
        raise PipelineError("explanations need torch and monai (extra 'torch')") from exc
    baseline = float(score(image[np.newaxis])[0, target])
    if baseline <= 0.0:
        raise PipelineError(f"the score to explain is {baseline:g}: nothing to explain")

    class _Scores(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
            return torch.from_numpy(np.asarray(score(array), dtype=np.float32))

    occlusion = OcclusionSensitivity(
        _Scores(), mask_size=mask_size, n_batch=batch, verbose=False, overlap=0.5, activate=False
    )
    b_box = None if box is None else list(box)
    with torch.no_grad(), warnings.catch_warnings():
        # MONAI 1.6 indexes tensors with lists, which torch 2.13 warns about on every call.
        warnings.simplefilter("ignore", UserWarning)
        occluded, _ = occlusion(torch.from_numpy(image[np.newaxis].copy()), b_box=b_box)
    # MONAI 1.6 returns (1, classes, rows, columns), whatever its docstring says.
    scores = occluded[0, target].cpu().numpy()
    drop = np.clip((baseline - scores) / baseline, 0.0, 1.0).astype(np.float32)
    heat = np.zeros(image.shape[1:], dtype=np.float32)
    if box is None:
        heat[:] = drop
    else:
        heat[box[0] : box[0] + drop.shape[0], box[2] : box[2] + drop.shape[1]] = drop
    return heat
