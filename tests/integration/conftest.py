"""Fixtures that start real services. scripts/test installs the Debian packages they need."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from intellect.devcluster.loopback import LoopbackCluster, missing_tools


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    """A real Slurm 22.05 (munged + slurmctld + 3 slurmd) on loopback, for this test module."""
    if os.geteuid() != 0:
        pytest.skip("the loopback Slurm cluster needs root")
    missing = missing_tools()
    if missing:
        pytest.skip(f"Slurm/munge not installed ({', '.join(missing)}); scripts/test installs them")
    root: Path = tmp_path_factory.mktemp("slurm")
    cluster = LoopbackCluster(root, nodes=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
