"""Validation of written objects against the DICOM IODs with David Clunie's ``dciodvfy``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydicom import Dataset

__all__ = [
    "DCIODVFY",
    "DciodvfyNotInstalledError",
    "dciodvfy_errors",
    "dciodvfy_messages",
]

DCIODVFY = "dciodvfy"
"""Name of the validator executable, looked up on PATH (Debian package ``dicom3tools``)."""

_TIMEOUT_S = 300
_ERROR_PREFIXES = ("Error", "Abort")


class DciodvfyNotInstalledError(RuntimeError):
    """``dciodvfy`` is not on PATH, so an object cannot be validated."""


def dciodvfy_messages(source: str | os.PathLike[str] | Dataset) -> list[str]:
    """Run ``dciodvfy`` on a DICOM file or dataset and return every line it reports.

    Parameters
    ----------
    source
        Path of a DICOM Part 10 file, or a dataset with file meta information (e.g. a
        highdicom object), which is written to a temporary file first.

    Returns
    -------
    list[str]
        The non-empty lines ``dciodvfy`` printed: the IOD name, ``Warning - ...`` and
        ``Error - ...`` lines, in order.

    Raises
    ------
    DciodvfyNotInstalledError
        If ``dciodvfy`` is not on PATH.
    FileNotFoundError
        If ``source`` is a path that does not exist.
    """
    executable = shutil.which(DCIODVFY)
    if executable is None:
        raise DciodvfyNotInstalledError(
            f"{DCIODVFY} was not found on PATH; install dicom3tools (apt-get install "
            "dicom3tools) to validate DICOM objects"
        )
    if isinstance(source, Dataset):
        with tempfile.TemporaryDirectory(prefix="dicom_sr-dciodvfy-") as folder:
            path = Path(folder) / "object.dcm"
            source.save_as(path, enforce_file_format=True)
            return _run(executable, path)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no DICOM file to validate at {path}")
    return _run(executable, path)


def dciodvfy_errors(source: str | os.PathLike[str] | Dataset) -> list[str]:
    """Return the error lines ``dciodvfy`` reports for a DICOM file or dataset.

    Warnings are left out; ``Error - ...`` lines and ``Abort - ...`` lines (the file could
    not be checked at all) are kept, so a valid object gives ``[]``.

    Parameters
    ----------
    source
        Path of a DICOM Part 10 file, or a dataset with file meta information.

    Returns
    -------
    list[str]
        The error lines, in the order ``dciodvfy`` printed them.

    Raises
    ------
    DciodvfyNotInstalledError
        If ``dciodvfy`` is not on PATH.
    FileNotFoundError
        If ``source`` is a path that does not exist.
    """
    return [line for line in dciodvfy_messages(source) if line.startswith(_ERROR_PREFIXES)]


def _run(executable: str, path: Path) -> list[str]:
    # The exit status is 1 when dciodvfy found errors or could not read the file; the
    # lines carry the detail, so they are the verdict and the status is not checked.
    completed = subprocess.run(
        [executable, os.fspath(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=_TIMEOUT_S,
        check=False,
    )
    output = completed.stdout + completed.stderr
    return [line.strip() for line in output.splitlines() if line.strip()]
