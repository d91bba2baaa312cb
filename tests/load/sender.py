"""One load-test sender: a separate process that stores N small images over one association.

``python -m tests.load.sender PORT COUNT INDEX`` sends COUNT copies of pydicom's 64x64 MR test
image, each with its own seeded UIDs (series INDEX), and prints how many were acknowledged.
"""

from __future__ import annotations

import sys

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

from node.export.requestor import answers_only_to_caller
from tests.paths import shared_data_root


def main() -> None:
    """Send, then print ``acknowledged=N``; exit 1 if the association failed."""
    port, count, index = (int(v) for v in sys.argv[1:4])
    template = pydicom.dcmread(shared_data_root() / "pydicom-3.0.2/test_files/MR_small.dcm")
    ae = AE(ae_title=f"LOAD{index:02d}")
    ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not assoc.is_established:
        print("acknowledged=0 association-failed")
        sys.exit(1)
    answers_only_to_caller(assoc)
    series_uid = generate_uid(entropy_srcs=["load-series", str(index)])
    acknowledged = 0
    for k in range(count):
        template.SeriesInstanceUID = series_uid
        template.SOPInstanceUID = generate_uid(entropy_srcs=["load-sop", f"{index}/{k}"])
        template.InstanceNumber = k + 1
        status = assoc.send_c_store(template)
        if status and int(status.Status) == 0:
            acknowledged += 1
    assoc.release()
    print(f"acknowledged={acknowledged}")


if __name__ == "__main__":
    main()
