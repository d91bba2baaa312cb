"""Fixtures of the job tests: the LIDC chest CT (shared with the pipeline tests)."""

from tests.unit.pipelines.conftest import lidc_datasets, lidc_volume

__all__ = ["lidc_datasets", "lidc_volume"]
