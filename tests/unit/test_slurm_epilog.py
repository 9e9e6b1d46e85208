"""The slurm role's timeouts in slurm.conf, and its Epilog (templates/epilog-cleanup.sh.j2) run for real.

Both are rendered by the role's own templates through Ansible (``render`` of test_provision_golden). The Epilog
then runs as slurmd would run it (SLURM_JOB_ID, SLURM_JOB_UID, SLURMD_NODENAME, no PATH of its own) against real
processes started here (as this test's user; in the GPU cases as nobody when that user is root): only
``scontrol``, ``squeue``, ``sinfo``, ``nvidia-smi`` and ``logger`` are stand-ins, on a temporary PATH, that record
their arguments and print what a test gives them. The signals, the /proc scan and the waits are the script's own.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("ansible", reason="ansible-core is in the ops extra")

from intellect.devcluster.inventory import dev_inventory, write_inventory  # noqa: E402
from intellect.devcluster.nodes import Net  # noqa: E402
from intellect.slurm.ops import MAX_REASON  # noqa: E402
from tests.unit.test_provision_golden import FIXTURES, render  # noqa: E402

NODE = "node7"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REASON = re.compile(r"^\[intellect\] (\S+) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ): (.+)$")


@dataclass(frozen=True)
class Rendered:
    slurm_conf: str
    epilog: Path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The dev inventory with the new variables set away from their defaults, and a 1 s Epilog grace."""
    tmp = tmp_path_factory.mktemp("epilog-render")
    inv = write_inventory(tmp / "inventory", dev_inventory(3, Net(), tmp, "not-a-secret"))
    out = tmp / "out"
    out.mkdir()
    extra = {
        "slurm_slurmd_timeout": 42,
        "slurm_unkillable_step_timeout": 77,
        "slurm_config_dir": "/opt/slurm/etc",
        "slurm_epilog_grace": 1,
    }
    files = render(inv, FIXTURES / "dev" / "facts.json", out, extra_vars=extra)
    return Rendered(files["slurm.conf"], out / "epilog-cleanup.sh")


def test_slurm_conf_has_the_timeouts_and_the_epilog(rendered: Rendered) -> None:
    lines = rendered.slurm_conf.splitlines()
    assert "SlurmdTimeout=42" in lines and "UnkillableStepTimeout=77" in lines
    assert "Epilog=/opt/slurm/etc/epilog.d/*" in lines
    assert "SlurmctldTimeout=120" in lines  # untouched: it only matters to a backup controller
    assert not [ln for ln in lines if ln.startswith("UnkillableStepProgram")]


def test_epilog_is_valid_bash_and_keeps_the_reason_bound(rendered: Rendered) -> None:
    text = rendered.epilog.read_text()
    assert text.startswith("#!/bin/bash\n") and "{%" not in text and "{{" not in text
    assert os.access(rendered.epilog, os.X_OK)
    assert "GRACE=1\n" in text
    assert f"MAX_TEXT={MAX_REASON} " in text  # the same bound as intellect.slurm.ops.make_reason
    subprocess.run(["bash", "-n", str(rendered.epilog)], check=True)
    if shutil.which("shellcheck"):
        res = subprocess.run(
            ["shellcheck", str(rendered.epilog)], capture_output=True, text=True, check=False
        )
        assert res.returncode == 0, res.stdout


STUB = """#!{python}
import json, os, sys
root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
name = os.path.basename(sys.argv[0])
with open(os.path.join(root, "calls.jsonl"), "a") as fh:
    fh.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
key = name + ("-" + sys.argv[1] if name == "scontrol" and len(sys.argv) > 1 else "")
if name == "squeue" and any(a.startswith("--jobs=") for a in sys.argv[1:]):
    key = "squeue-jobs"
out = os.path.join(root, "out", key)
if os.path.exists(out):
    sys.stdout.write(open(out).read())
sys.exit(int(open(out + ".rc").read()) if os.path.exists(out + ".rc") else 0)
"""


class FakeNode:
    """A temporary PATH of recording stand-ins for the Slurm commands, nvidia-smi and logger."""

    def __init__(self, root: Path, gpus: bool) -> None:
        self.root = root
        (root / "bin").mkdir(parents=True)
        (root / "out").mkdir()
        names = ["scontrol", "squeue", "sinfo", "logger"] + (["nvidia-smi"] if gpus else [])
        for name in names:
            stub = root / "bin" / name
            stub.write_text(STUB.format(python=sys.executable))
            stub.chmod(0o755)
        # as a real node with no job steps left: listpids prints its header and exits 1
        self.give("scontrol-listpids", "PID      JOBID    STEPID   LOCALID GLOBALID\n", rc=1)
        self.give("sinfo", "mixed|none\n")

    def give(self, key: str, output: str, rc: int = 0) -> None:
        (self.root / "out" / key).write_text(output)
        (self.root / "out" / f"{key}.rc").write_text(str(rc))

    def calls(self, name: str) -> list[list[str]]:
        path = self.root / "calls.jsonl"
        rows = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
        return [row[1:] for row in rows if row[0] == name]

    def drains(self) -> list[list[str]]:
        return [c for c in self.calls("scontrol") if c and c[0] == "update"]

    def run_epilog(self, epilog: Path, job: int, **env: str) -> subprocess.CompletedProcess[str]:
        """As slurmd runs it: as root there (this test's user here), with the job's variables."""
        base = {"SLURM_JOB_ID": str(job), "SLURM_JOB_UID": str(os.getuid()), "SLURMD_NODENAME": NODE}
        full = {"PATH": str(self.root / "bin"), **base, **env}
        return subprocess.run(
            [str(epilog)], env=full, cwd=self.root, capture_output=True, text=True, timeout=60, check=False
        )


def _host_has_nvidia_smi() -> bool:
    return shutil.which("nvidia-smi", path=SYSTEM_PATH) is not None


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node", gpus=_host_has_nvidia_smi())


@pytest.fixture
def gpu_node(tmp_path: Path) -> FakeNode:
    node = FakeNode(tmp_path / "gpu-node", gpus=True)
    node.give("nvidia-smi", "")
    return node


@pytest.fixture
def job() -> int:
    """A job id no real process here carries (the Epilog scans every process of this user)."""
    return random.randrange(3_000_000_000, 4_000_000_000)


CHILD = """import signal, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(300)
"""


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a process as a job would leave it (its own session, the job id in its environment); every process
    started here is ended and reaped afterwards. As another ``user`` it is a plain ``sleep``."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        job_id: int | None, ignore_term: bool = False, user: int | None = None
    ) -> subprocess.Popen[bytes]:
        env = {"PATH": SYSTEM_PATH}
        if job_id is not None:
            env["SLURM_JOB_ID"] = str(job_id)
        if user is None:
            argv = [sys.executable, "-c", CHILD, "ignore-term" if ignore_term else "plain"]
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, start_new_session=True)
        else:
            argv = [shutil.which("sleep") or "/bin/sleep", "300"]
            proc = subprocess.Popen(argv, env=env, start_new_session=True, user=user)
        started.append(proc)
        if proc.stdout is not None:
            assert proc.stdout.readline() == b"ready\n"  # its SIGTERM disposition is set
        else:
            _wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text() == "sleep\n")
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def job_user() -> int:
    """The job's user in the GPU cases: this test's user, or nobody when that is root (the Epilog never ends a
    GPU process of root that carries no job id: it may be a system daemon)."""
    return 65534 if os.geteuid() == 0 else os.getuid()


@pytest.fixture
def zombie(job_user: int) -> Iterator[Callable[[str], int]]:
    """Processes of the job's user that have exited and are not reaped: no signal ends them, as with a process
    stuck in the GPU driver. Each is named (its comm) after the link it ran as; all are reaped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="epilog-zombies-"))
    folder.chmod(0o755)  # reachable by job_user
    made: list[subprocess.Popen[bytes]] = []

    def make(name: str) -> int:
        link = folder / name
        link.symlink_to(shutil.which("true") or "/bin/true")
        user = job_user if job_user != os.getuid() else None
        proc = subprocess.Popen([str(link)], env={}, user=user)
        made.append(proc)
        _wait_for(lambda: _state(proc.pid) == "Z")  # never proc.poll(): it would reap the zombie
        return proc.pid

    yield make
    for proc in made:
        proc.wait(timeout=10)
    shutil.rmtree(folder)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]


def _ended_by(proc: subprocess.Popen[bytes], sig: signal.Signals) -> bool:
    return proc.wait(timeout=10) == -sig


def test_a_leftover_of_the_job_is_killed_and_other_processes_survive(
    rendered: Rendered, node: FakeNode, job: int, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    leftover = spawn(job)
    other_job = spawn(job + 1)
    no_job = spawn(None)
    res = node.run_epilog(rendered.epilog, job)
    assert res.returncode == 0, res.stderr
    assert _ended_by(leftover, signal.SIGTERM)
    assert other_job.poll() is None and no_job.poll() is None
    assert node.drains() == []
    assert node.calls("scontrol") == [["listpids", "*", NODE]]
    assert f"job {job}: 1 leftover process(es): {leftover.pid} python" in res.stderr
    assert "ended after SIGTERM" in res.stderr


def test_a_late_epilog_of_a_requeued_job_running_here_again_kills_nothing(
    rendered: Rendered, node: FakeNode, job: int, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """A requeued job keeps its id. The node was lost and came back; Slurm runs the old run's Epilog while the
    new run already has processes here with the same SLURM_JOB_ID: they are left alone."""
    node.give("squeue-jobs", "RUNNING\n")
    new_run = spawn(job)
    res = node.run_epilog(rendered.epilog, job)
    assert res.returncode == 0, res.stderr
    assert new_run.poll() is None and node.drains() == [], (res.stderr, node.calls("squeue"))
    assert f"job {job} runs on {NODE} again (requeued)" in res.stderr
    (call,) = node.calls("squeue")
    assert f"--jobs={job}" in call and f"--nodelist={NODE}" in call
    node.give("squeue-jobs", "COMPLETING\n")  # the usual case: the job is ending here, so its leftovers go
    assert node.run_epilog(rendered.epilog, job).returncode == 0 and _ended_by(new_run, signal.SIGTERM)


def test_a_leftover_that_ignores_sigterm_gets_sigkill(
    rendered: Rendered, node: FakeNode, job: int, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    stubborn = spawn(job, ignore_term=True)
    polite = spawn(job)
    began = time.monotonic()
    res = node.run_epilog(rendered.epilog, job)
    assert res.returncode == 0, res.stderr
    assert _ended_by(polite, signal.SIGTERM) and _ended_by(stubborn, signal.SIGKILL)
    assert time.monotonic() - began >= 0.9  # the 1 s grace after SIGTERM
    assert f"1 process(es) outlived SIGTERM by 1 s: {stubborn.pid} python" in res.stderr
    assert "ended after SIGKILL" in res.stderr and node.drains() == []


def test_a_process_that_slurm_gives_to_another_job_is_never_signalled(
    rendered: Rendered, node: FakeNode, job: int, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    tracked = spawn(job)  # carries this job's id, but a running step of another job owns it
    node.give(
        "scontrol-listpids", f"PID      JOBID    STEPID   LOCALID GLOBALID\n{tracked.pid:<8} {job + 5:<8} 0\n"
    )
    res = node.run_epilog(rendered.epilog, job)
    assert res.returncode == 0, res.stderr
    assert tracked.poll() is None and node.drains() == []


def test_without_the_job_variables_it_does_nothing(rendered: Rendered, node: FakeNode, job: int) -> None:
    res = node.run_epilog(rendered.epilog, job, SLURM_JOB_ID="")
    assert res.returncode == 0 and "nothing to clean" in res.stderr
    assert node.calls("scontrol") == []


Zombie = Callable[[str], int]


def test_a_gpu_process_that_survives_sigkill_drains_the_node_naming_the_job(
    rendered: Rendered, gpu_node: FakeNode, job: int, job_user: int, zombie: Zombie
) -> None:
    evil = (
        '$(touch P);"\n`'  # a process name is not to be trusted: it must not reach a shell or a second line
    )
    pids = [zombie(evil + str(i)) for i in range(8)]
    gpu_node.give("nvidia-smi", "".join(f"{p}\n" for p in pids))  # still on the GPU after any signal
    res = gpu_node.run_epilog(rendered.epilog, job, SLURM_JOB_UID=str(job_user))
    assert res.returncode == 1, res.stderr
    [update] = gpu_node.drains()
    assert update[:3] == ["update", f"NodeName={NODE}", "State=DRAIN"] and len(update) == 4
    reason = update[3].removeprefix("Reason=")
    match = REASON.match(reason)
    assert match and "\n" not in reason, reason
    text = match.group(3)
    assert text.startswith(f"epilog: job {job} left 8 process(es) after SIGKILL: {pids[0]} __touch_P_____0 ")
    assert "(state Z, on a GPU)" in text
    assert len(text) <= MAX_REASON and text.endswith("...")  # eight survivors do not fit: cut, and marked
    assert not set('$`";\n') & set(text) and not (gpu_node.root / "P").exists()
    squeue = [c for c in gpu_node.calls("squeue") if not any(a.startswith("--jobs=") for a in c)]
    assert squeue and f"--nodelist={NODE}" in squeue[0] and f"--user={job_user}" in squeue[0]


def test_a_gpu_process_without_a_job_id_is_left_while_its_user_has_another_job_here(
    rendered: Rendered, gpu_node: FakeNode, job: int, job_user: int, zombie: Zombie
) -> None:
    gpu_node.give("nvidia-smi", f"{zombie('cuda-worker')}\n")
    gpu_node.give("squeue", f"{job}\n{job + 1}\n")  # this job (completing) and another one of the same user
    res = gpu_node.run_epilog(rendered.epilog, job, SLURM_JOB_UID=str(job_user))
    assert res.returncode == 0, res.stderr
    assert gpu_node.drains() == [] and "the user has other jobs here: left alone" in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another user needs root")
def test_a_gpu_process_of_another_user_is_left_alone(
    rendered: Rendered, gpu_node: FakeNode, job: int, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    theirs = spawn(job, user=65534)  # even with this job's id: not this job's user
    gpu_node.give("nvidia-smi", f"{theirs.pid}\n")
    res = gpu_node.run_epilog(rendered.epilog, job)
    assert res.returncode == 0, res.stderr
    assert theirs.poll() is None and gpu_node.drains() == []
    assert f"GPU process {theirs.pid} of uid 65534 is not this job's user's" in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a process of root")
def test_a_gpu_process_of_root_without_a_job_id_is_left_alone(
    rendered: Rendered, gpu_node: FakeNode, job: int, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    daemon = spawn(None)  # root's, no job id: it may be a system daemon, even when the job was root's
    gpu_node.give("nvidia-smi", f"{daemon.pid}\n")
    res = gpu_node.run_epilog(rendered.epilog, job, SLURM_JOB_UID="0")
    assert res.returncode == 0, res.stderr
    assert daemon.poll() is None and gpu_node.drains() == []
    assert f"GPU process {daemon.pid} of root has no job id: left alone" in res.stderr


def test_a_person_s_drain_keeps_its_reason(
    rendered: Rendered, gpu_node: FakeNode, job: int, job_user: int, zombie: Zombie
) -> None:
    gpu_node.give("nvidia-smi", f"{zombie('stuck')}\n")
    gpu_node.give("sinfo", "drained|replacing GPU 3 (bob)\n")
    res = gpu_node.run_epilog(rendered.epilog, job, SLURM_JOB_UID=str(job_user))
    assert res.returncode == 1  # Slurm's own drain on a non-zero Epilog is a no-op on a drained node
    assert gpu_node.drains() == []
    assert "drained already by someone else: 'replacing GPU 3 (bob)' stays" in res.stderr
