"""Submission through submitit: the Slurm executor where sbatch answers, the local executor otherwise.

Both executors run the same rendered batch script (``run_batch_script``): under Slurm it splits the allocation
with srun job steps; without Slurm it starts the same role processes on this machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from intellect.errors import LaunchError, SlurmError, SlurmUnreachable
from intellect.slurm import run as slurm_run
from intellect.slurm.plan import Plan

Executor = Literal["auto", "slurm", "local"]


def run_batch_script(script: str, env: dict[str, str]) -> int:
    """The function submitit runs in the job: the rendered script, its output into the job log.

    On the local executor the script runs in a session of its own, and an interrupt (Ctrl-C on ``launch``,
    which submitit forwards as SIGINT and follows with SIGKILL about a second later) sends SIGTERM to that whole
    group at once: the script's trap stops every role and waits for them, even after this process is gone.
    Under Slurm, Slurm owns the processes (scancel, requeue) and the script stays in the job's session."""
    local = env.get("INTELLECT_EXECUTOR") == "local"
    proc = subprocess.Popen(["bash", script], env={**os.environ, **env}, start_new_session=local)
    if local:  # a closed terminal or a kill of the launcher stops the roles too, through the handler below
        for sig in (signal.SIGHUP, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: submitit's own handling applies
                signal.signal(sig, _raise_interrupt)
    try:
        proc.wait()
    except BaseException:
        if local:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(BaseException):
            proc.wait(timeout=0.8)
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"batch script {script} exited with {proc.returncode}")
    return proc.returncode


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Submission:
    job_id: str
    executor: str
    folder: Path
    job: Any  # submitit.Job

    def wait(self) -> None:
        """Block until the job ends (local executor)."""
        with contextlib.suppress(Exception):  # the role exit codes in status/ say what failed
            self.job.result()

    def done(self) -> bool:
        return bool(self.job.done())


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Point fds 1 and 2 at ``path`` while a child is spawned, so its output (and its traceback on Ctrl-C)
    goes to the run's folder instead of the user's terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as fh:
        try:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def choose_executor(requested: Executor) -> str:
    if requested == "local":
        return "local"
    if slurm_run.controller_up():
        return "slurm"
    if requested == "slurm":
        raise SlurmUnreachable(
            "slurm executor requested but sbatch is missing or slurmctld does not answer",
            hint="scontrol ping, or use --executor local",
        )
    return "local"


def _slurm_parameters(plan: Plan, timeout_min: int) -> dict[str, Any]:
    s = plan.sbatch
    params: dict[str, Any] = {
        "job_name": s["job-name"],
        "nodes": s["nodes"],
        "ntasks_per_node": 1,
        "time": timeout_min,
        "use_srun": False,  # the batch script itself splits the allocation with srun steps
        "additional_parameters": {"requeue": True, "no-kill": True, "open-mode": "append"},
    }
    for key in ("partition", "account", "qos", "mem", "exclude"):
        if key in s:
            params[key] = s[key]
    if "gpus-per-node" in s:
        params["gpus_per_node"] = s["gpus-per-node"]
    if "cpus-per-task" in s:
        params["cpus_per_task"] = s["cpus-per-task"]
    if s.get("exclusive"):
        params["exclusive"] = True
    return params


def submit(plan: Plan, script: Path, executor: str, timeout_min: int) -> Submission:
    """Submit the rendered script. Raises LaunchError (nothing submitted) on a refused submission."""
    import submitit

    folder = Path(plan.run_dir) / "submitit"
    env = {"INTELLECT_PYTHON": os.environ.get("INTELLECT_PYTHON", sys.executable), "PYTHONUNBUFFERED": "1"}
    env["INTELLECT_EXECUTOR"] = executor
    ex: Any
    if executor == "slurm":
        ex = submitit.SlurmExecutor(folder=folder)
        ex.update_parameters(**_slurm_parameters(plan, timeout_min))
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout_min)
    try:
        if executor == "local":
            with _output_to(folder / "controller.log"):  # submitit's controller inherits our stdout/stderr
                job = ex.submit(run_batch_script, str(script), env)
        else:
            job = ex.submit(run_batch_script, str(script), env)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.output or b"").decode(errors="replace").strip().splitlines()
        raise SlurmError(f"sbatch refused the job: {detail[-1] if detail else exc}") from exc
    except (OSError, ValueError) as exc:
        raise LaunchError(f"submission failed: {exc}") from exc
    return Submission(job_id=str(job.job_id), executor=executor, folder=folder, job=job)
