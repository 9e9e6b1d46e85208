"""Where a role process runs: one log line at start, so logs and Slurm agree on the placement."""

from __future__ import annotations

import logging
import os
import socket


def node_name() -> str:
    """Slurm's name for this node inside a job step, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def announce(role: str) -> None:
    """``<role> rank R on node N (job J, step S, pid P, CUDA_VISIBLE_DEVICES=...)``: where this rank runs and
    which devices Slurm bound to it (``--gpus-per-task``), so distinct ranks on one node can be seen to hold
    distinct devices."""
    from intellect.rl.failure import role_rank

    env = os.environ
    logging.getLogger(f"intellect.{role}").info(
        "%s rank %d on node %s (job %s, step %s, pid %d, CUDA_VISIBLE_DEVICES=%s)", role, role_rank(), node_name(),
        env.get("SLURM_JOB_ID", "-"), env.get("SLURM_STEP_ID", "-"), os.getpid(),
        env.get("CUDA_VISIBLE_DEVICES", "unset"),
    )  # fmt: skip
