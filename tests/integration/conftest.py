"""Fixtures that start real services. scripts/test installs the Debian packages they need."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from intellect.devcluster.loopback import LoopbackCluster, missing_tools
from tests.integration.devcluster import BRIDGE, NODES, PREFIX, DevClusterHandle, host_intellect, skip_reason


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


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevClusterHandle]:
    """`intellect dev-cluster up --nodes 4`, once for the session: nspawn nodes provisioned by our playbooks.

    The first run builds the base image with debootstrap and the node image (about 70 s together) and caches
    them in /var/cache/intellect/devcluster. It uses its own bridge, subnet and state folder, and always tears down.

    To iterate on these tests, point INTELLECT_TEST_DEVCLUSTER_DIR at the state folder of a 4-node cluster you
    started yourself: it is used as it is and left up (the `down` test is skipped)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from intellect.devcluster.cluster import DevCluster
    from intellect.devcluster.nodes import Net

    reuse = os.environ.get("INTELLECT_TEST_DEVCLUSTER_DIR")
    if reuse:
        dev = DevCluster(Path(reuse), Net(**DevCluster(Path(reuse)).read_state()["net"]))
        yield DevClusterHandle(
            dev,
            {
                "INTELLECT_DEVCLUSTER_DIR": reuse,
                "INTELLECT_DEVCLUSTER_BRIDGE": dev.net.bridge,
                "INTELLECT_DEVCLUSTER_PREFIX": dev.net.prefix,
            },
            reused=True,
        )
        return

    state = tmp_path_factory.mktemp("devcluster")
    env = {
        "INTELLECT_DEVCLUSTER_DIR": str(state),
        "INTELLECT_DEVCLUSTER_BRIDGE": BRIDGE,
        "INTELLECT_DEVCLUSTER_PREFIX": PREFIX,
    }
    dev = DevCluster(state, Net(BRIDGE, PREFIX))
    try:
        res = host_intellect("dev-cluster", "up", "--nodes", str(NODES), env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        yield DevClusterHandle(dev, env)
    finally:
        dev.teardown(lambda _msg: None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The dev cluster's tests run together, at the end, and `down` (marker devcluster_down) runs last of all:
    the cluster is booted once for the session."""
    on_cluster = [i for i in items if "dev_cluster" in getattr(i, "fixturenames", ())]
    down = [i for i in on_cluster if i.get_closest_marker("devcluster_down")]
    rest = [i for i in items if i not in on_cluster]
    items[:] = rest + [i for i in on_cluster if i not in down] + down
