"""Fault tests on the real role processes (inference server, orchestrator, trainer) on loopback.

- The inference server is SIGKILLed mid-run and restarted: the run finishes, no rollout is lost or trained
  twice (checked by rollout ids and trainer steps).
- The trainer is SIGKILLed mid-run and restarted: it resumes from the last complete checkpoint and the run
  finishes with every step trained.
- The whole job dies after the trainer has written weights past its last checkpoint, and is started again as the
  batch script does (``intellect.rl.resume`` first, then every role): the crashed run's future is set aside and no
  server runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from intellect.devcluster.loopback import free_port
from intellect.procs import terminate_then_kill
from tests.conftest import RECIPES, ROOT

pytestmark = pytest.mark.slow
STEPS = 14


class Run:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "run"
        (self.dir / "logs").mkdir(parents=True)
        data = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
        data["run_dir"] = str(self.dir)
        data["algorithm"].update(steps=STEPS, pretrain={"steps": 20, "learning_rate": 3e-3, "batch_size": 32})
        data["evals"].update(every=0, samples=32)
        data["checkpoints"] = {"every": 3, "keep": 2}
        self.port = free_port()
        data["roles"]["inference"]["port"] = self.port
        data["roles"]["trainer"]["metrics_port"] = free_port()
        data["roles"]["orchestrator"]["metrics_port"] = free_port()
        self.config = self.dir / "recipe.resolved.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}

    def start(self, role: str) -> subprocess.Popen:
        n = self.starts.get(role, 0)
        self.starts[role] = n + 1
        log = (self.dir / "logs" / f"{role}-{n}.log").open("w")
        args = [sys.executable, "-m", f"intellect.rl.{role}", "--config", str(self.config)]
        if role == "inference":
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        env = {
            **os.environ,
            "INFERENCE_URLS": f"http://127.0.0.1:{self.port}",
            "OMP_NUM_THREADS": "1",
            "INTELLECT_METRICS_ADDR": "127.0.0.1",
            "INTELLECT_METRICS_HOST": "127.0.0.1",
        }
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        log.close()
        self.procs[role] = proc
        return proc

    def start_all(self) -> None:
        for role in ("inference", "trainer", "orchestrator"):
            self.start(role)

    def crash(self, role: str) -> None:
        """SIGKILL ``role``, as a crash would, and reap it."""
        self.procs[role].send_signal(signal.SIGKILL)
        self.procs[role].wait()

    def wait_for(self, path: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not (self.dir / path).exists():
            dead = {r: p.returncode for r, p in self.procs.items() if p.poll() is not None}
            assert time.monotonic() < deadline, f"no {path} after {timeout} s; exited: {dead}"
            time.sleep(0.1)

    def crash_all(self) -> None:
        """The trainer dies, and the batch script's supervision stops the other roles (SIGKILL here)."""
        for role in ("trainer", "orchestrator", "inference"):
            self.crash(role)

    def finish(self, timeout: float = 300) -> None:
        for role in ("orchestrator", "trainer"):
            assert self.procs[role].wait(timeout=timeout) == 0, self.log(role)

    def stop(self) -> None:
        for proc in self.procs.values():
            terminate_then_kill(proc, grace=15)

    def log(self, role: str) -> str:
        """The tail of each of ``role``'s logs (for failure messages)."""
        return "".join(p.read_text()[-2000:] for p in sorted((self.dir / "logs").glob(f"{role}-*.log")))

    def text(self, role: str) -> str:
        """All of ``role``'s logs (for what they must say)."""
        return "".join(p.read_text() for p in sorted((self.dir / "logs").glob(f"{role}-*.log")))

    def rollout_ids(self) -> list[str]:
        ids = []
        for step in range(1, STEPS + 1):
            lines = (self.dir / "rollouts" / f"step_{step}" / "rollouts.jsonl").read_text().splitlines()
            ids += [json.loads(line)["id"] for line in lines]
        return ids

    def trained_steps(self) -> list[int]:
        records = map(json.loads, (self.dir / "metrics.jsonl").read_text().splitlines())
        return [r["step"] for r in records if r.get("role") == "trainer" and "phase" not in r]


@pytest.fixture
def run(tmp_path: Path):
    r = Run(tmp_path)
    yield r
    r.stop()


def test_inference_killed_and_restarted(run: Run) -> None:
    run.start_all()
    run.wait_for("rollouts/step_4/STABLE")
    run.crash("inference")
    time.sleep(1.0)
    run.start("inference")
    run.finish()
    ids = run.rollout_ids()
    assert len(ids) == len(set(ids)) == STEPS * 128  # no rollout lost, none handed over twice
    assert run.trained_steps() == list(range(1, STEPS + 1))  # each batch trained exactly once
    assert "is down" in run.text("orchestrator")  # it noticed, rerouted and carried on
    assert json.loads((run.dir / "summary.json").read_text())["steps"] == STEPS


def test_trainer_killed_resumes_from_checkpoint(run: Run) -> None:
    run.start_all()
    run.wait_for("weights/step_7/STABLE")
    run.crash("trainer")
    complete = sorted(
        int(p.parent.name.split("_")[1]) for p in (run.dir / "checkpoints").glob("step_*/STABLE")
    )
    last = complete[-1]
    assert last >= 6
    run.start("trainer")
    run.finish()
    assert f"next step {last + 1}" in run.text("trainer")
    steps = run.trained_steps()
    assert sorted(set(steps)) == list(range(1, STEPS + 1))  # no step lost
    retrained = [s for s in set(steps) if steps.count(s) > 1]
    assert all(s > last for s in retrained)  # only steps after the checkpoint ran again
    ids = run.rollout_ids()
    assert len(ids) == len(set(ids))


def test_a_resumed_job_never_serves_the_crashed_runs_future(run: Run) -> None:
    from intellect.rl import layout

    run.start_all()
    run.wait_for(
        "weights/step_8/STABLE"
    )  # checkpoints every 3: step 6 is the last one, weights 7 and 8 are past it
    run.crash_all()
    checkpoint = layout.latest_step(run.dir, layout.CHECKPOINTS)
    future = [n for n in layout.stable_steps(run.dir, layout.WEIGHTS) if n > (checkpoint or 0)]
    assert checkpoint == 6 and future[:2] == [7, 8], (checkpoint, future)
    rolled = [n for n in layout.stable_steps(run.dir, layout.ROLLOUTS) if n > checkpoint]

    step = subprocess.run(
        [sys.executable, "-m", "intellect.rl.resume", "--config", str(run.config)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert step.returncode == 0, step.stderr
    assert "resume from checkpoint 6: set aside weights" in step.stdout
    aside = next((run.dir / "set_aside").iterdir())
    assert layout.stable_steps(aside, layout.WEIGHTS) == future
    assert layout.stable_steps(aside, layout.ROLLOUTS) == rolled
    assert layout.latest_step(run.dir, layout.WEIGHTS) == 6

    run.start_all()
    run.finish()
    server = (run.dir / "logs" / "inference-1.log").read_text()
    assert (
        "serving weights of step 6 from" in server
    )  # the restarted server starts from the checkpoint's weights
    for n in range(1, STEPS + 1):
        for sample in layout.read_batch(run.dir, n):
            first, last = sample.weight_steps
            # batch N can only come from weights <= N-1 the resumed trainer wrote: never from a crashed step
            assert n - 2 <= first <= last <= n - 1, (n, sample.weight_steps)
    ids = [s.id for n in range(1, STEPS + 1) for s in layout.read_batch(run.dir, n)]
    assert len(ids) == len(set(ids))
    assert "next step 7" in run.text("trainer")
    assert sorted(set(run.trained_steps())) == list(range(1, STEPS + 1))
