"""Where a role process runs: one log line at start, so logs and Slurm agree on the placement."""

from __future__ import annotations

import logging
import os
import socket


def node_name() -> str:
    """Slurm's name for this node inside a job step, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def announce(role: str) -> None:
    rank = os.environ.get("SLURM_PROCID") or os.environ.get("RANK") or "0"
    job = os.environ.get("SLURM_JOB_ID", "-")
    logging.getLogger(f"intellect.{role}").info(
        "%s rank %s on node %s (job %s, pid %d)", role, rank, node_name(), job, os.getpid()
    )
