"""Fuzzing STOW-RS with generated multipart bodies and media types (hypothesis, derandomized).

2,500 requests go to the STOW-RS service over a fresh spool and index, in this process: bodies of
real, mutated and random parts, well-formed or cut, with bytes inserted or flipped, boundaries
that do not match, and media types right and wrong. Each must get one of STOW-RS's statuses with
a JSON body, quickly; afterwards a good request still stores, and every instance any response
acknowledged is indexed.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.corpus import mutated, seeds
from tests.integration.test_stow_rs import BOUNDARY, MULTIPART, REFERENCED, StowApp, uids

pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore")]

STOW_EXAMPLES = 2_500
SLOWEST_ALLOWED_S = 2.0
STATUSES = {200, 202, 400, 409, 415}

FUZZ_SETTINGS = settings(
    database=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    max_examples=STOW_EXAMPLES,
)

_KINDS = ["bit_flips", "truncations", "insertions", "length_changes"]


@st.composite
def part_bytes(draw: st.DrawFn) -> bytes:
    """A real seed file, a mutated one, or random bytes."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.sampled_from(seeds())).data
    if choice == 1:
        _seed, data = draw(st.sampled_from(_KINDS).flatmap(mutated))
        return data
    return draw(st.binary(max_size=512))


@st.composite
def stow_request(draw: st.DrawFn) -> tuple[str, bytes]:
    """A media type and a body, each right or broken in some way."""
    boundary = draw(st.sampled_from([BOUNDARY, "x", "a'b(c)", "--", "ünï"]))
    part_type = draw(
        st.sampled_from(["application/dicom", "application/dicom; transfer-syntax=*", "", "text/x"])
    )
    parts = draw(st.lists(part_bytes(), max_size=3))
    body = b"".join(
        f"--{boundary}\r\n".encode(errors="replace")
        + (f"Content-Type: {part_type}\r\n" if part_type else "").encode()
        + b"\r\n"
        + part
        + b"\r\n"
        for part in parts
    )
    if draw(st.booleans()):
        body += f"--{boundary}--\r\n".encode(errors="replace")
    mutation = draw(st.sampled_from(["none", "truncate", "insert", "flip"]))
    if body and mutation != "none":
        at = draw(st.integers(0, len(body) - 1))
        if mutation == "truncate":
            body = body[:at]
        elif mutation == "insert":
            body = body[:at] + draw(st.binary(min_size=1, max_size=64)) + body[at:]
        else:
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
    right = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    if draw(st.integers(0, 9)) < 6:  # mostly the right media type: exercise the parser
        media = right
    else:
        media = draw(
            st.sampled_from(
                [
                    MULTIPART,  # a boundary that may not be the body's
                    f"multipart/related; boundary={boundary}",
                    "application/dicom",
                    f'{right}; start="<a>"',
                ]
            )
            | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
        )
    return media, body


@pytest.mark.timeout(600)
def test_stow_answers_every_generated_request(tmp_path: Path) -> None:
    app = StowApp(tmp_path)
    statuses: collections.Counter[int] = collections.Counter()
    acknowledged: set[str] = set()
    slowest = 0.0

    @FUZZ_SETTINGS
    @given(request=stow_request())
    def run(request: tuple[str, bytes]) -> None:
        nonlocal slowest
        media, body = request
        started = time.perf_counter()
        response = app.client.post(
            "/dicomweb/studies", content=body, headers={"content-type": media.encode("latin-1")}
        )
        slowest = max(slowest, time.perf_counter() - started)
        assert response.status_code in STATUSES, (response.status_code, response.text[:300])
        answer = response.json()
        if response.status_code in (200, 202):
            acknowledged.update(u for u in uids(answer, REFERENCED) if u)
        statuses[response.status_code] += 1

    try:
        run()
        good = seeds()[0].data
        body = (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + good
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        assert app.post(body).status_code == 200
        assert acknowledged <= app.indexed()
    finally:
        app.db.dispose()
    print(f"STOW-RS: {dict(statuses)}, slowest {slowest * 1000:.0f} ms")
    assert sum(statuses.values()) >= STOW_EXAMPLES
    assert statuses[200] + statuses[202] > 0  # the generator reaches storing ...
    assert statuses[400] > 0  # ... broken multipart ...
    assert statuses[415] > 0  # ... and wrong media types
    assert slowest < SLOWEST_ALLOWED_S
