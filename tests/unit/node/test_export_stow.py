"""How a STOW-RS response (PS3.18 10.5.3) is judged: confirmed, retryable, or refused."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydicom.dataset import Dataset

from node.errors import PeerRejected, PeerUnreachable
from node.export.dicomweb import stow_outcome

SENT = {"1.2.3.1", "1.2.3.2"}


def answer(
    stored: Sequence[str] = (),
    failed: Sequence[tuple[str, int | None]] = (),
    warning: int | None = None,
) -> Dataset:
    ds = Dataset()
    ds.ReferencedSOPSequence = []
    for uid in stored:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
        item.ReferencedSOPInstanceUID = uid
        if warning is not None:
            item.WarningReason = warning
        ds.ReferencedSOPSequence.append(item)
    ds.FailedSOPSequence = []
    for uid, reason in failed:
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        if reason is not None:
            item.FailureReason = reason
        ds.FailedSOPSequence.append(item)
    return ds


def judge(response: Dataset | None, status: int = 200) -> None:
    stow_outcome(response, SENT, peer="pacs", where="http://pacs/dicom-web", http_status=status)


def test_every_instance_referenced_is_confirmed() -> None:
    judge(answer(stored=sorted(SENT)))


def test_coercion_warnings_still_confirm() -> None:
    judge(answer(stored=sorted(SENT), warning=0xB000), status=202)


def test_one_instance_missing_is_not_a_confirmation() -> None:
    with pytest.raises(PeerRejected, match="without confirming 1 of 2") as caught:
        judge(answer(stored=["1.2.3.1"]))
    assert caught.value.status == 0


def test_no_answer_at_all_is_not_a_confirmation() -> None:
    with pytest.raises(PeerRejected, match="HTTP 200 without confirming 2 of 2"):
        judge(None)


def test_out_of_resources_is_retryable() -> None:
    with pytest.raises(PeerUnreachable, match="0xA700"):
        judge(answer(stored=["1.2.3.1"], failed=[("1.2.3.2", 0xA700)]), status=202)


def test_a_permanent_reason_wins_over_a_retryable_one() -> None:
    with pytest.raises(PeerRejected, match="refused 2 of 2") as caught:
        judge(answer(failed=[("1.2.3.1", 0xA700), ("1.2.3.2", 0xC000)]), status=409)
    assert caught.value.status == 0xC000


def test_a_failure_without_reason_is_a_processing_failure() -> None:
    with pytest.raises(PeerRejected, match="0x0110") as caught:
        judge(answer(stored=["1.2.3.1"], failed=[("1.2.3.2", None)]), status=202)
    assert caught.value.status == 0x0110
