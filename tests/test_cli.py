"""The CLI as users run it: a subprocess of the real entry point. Exit codes: 1 failure, 2 misuse, 3 no Slurm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import FAKE_PYTHON, RECIPES, ROOT, run_cli

HEAVY = ("torch", "transformers", "vllm", "ansible", "ansible_runner")


def _modules_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from intellect.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"sys.stderr.write('MODULES:' + ' '.join(m for m in {HEAVY!r} if m in sys.modules) + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(proc.stderr.rsplit("MODULES:", 1)[1].split())


def test_help_and_dry_run_import_no_heavy_module() -> None:
    assert _modules_after(["--help"]) == set()
    assert _modules_after(["launch", "--help"]) == set()
    assert _modules_after(["launch", str(RECIPES / "intellect3.yaml"), "--dry-run", "--json"]) == set()


def test_dry_run_json_plan_for_intellect3() -> None:
    proc = run_cli("launch", "recipes/intellect3.yaml", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    roles = data["plan"]["roles"]
    assert (roles["trainer"]["nodes"], roles["inference"]["nodes"]) == (16, 44)
    assert roles["trainer"]["node_index"] == "0-15" and roles["inference"]["node_index"] == "16-59"
    assert roles["trainer"]["env"]["MASTER_PORT"] == "29500"
    assert data["script"].startswith("#!/bin/bash")


def test_dry_run_text_prints_script_on_stdout_and_plan_on_stderr() -> None:
    proc = run_cli("launch", "recipes/debug-cpu.yaml", "--dry-run")
    assert proc.returncode == 0
    assert proc.stdout.startswith("#!/bin/bash")
    assert "role plan" in proc.stderr


def _bad_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"bad-{len(list(tmp_path.glob('bad-*')))}.yaml"
    path.write_text(text)
    return path


def _one_error_line(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_input_gives_one_line_exit_1_and_no_job(tmp_path: Path) -> None:
    good = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
    cases = {
        "missing": (tmp_path / "absent.yaml", "no such recipe file"),
        "syntax": (_bad_recipe(tmp_path, "name: x\ncluster: {nodes: 2\n"), "YAML syntax error"),
        "type": (
            _bad_recipe(tmp_path, yaml.safe_dump({**good, "cluster": {**good["cluster"], "nodes": "two"}})),
            "cluster.nodes",
        ),
        "unknown": (_bad_recipe(tmp_path, yaml.safe_dump({**good, "modle": {}})), "did you mean 'model'"),
        "split": (
            _bad_recipe(tmp_path, yaml.safe_dump({**good, "cluster": {**good["cluster"], "nodes": 7}})),
            "add up",
        ),
    }
    for name, (path, needle) in cases.items():
        run_dir = tmp_path / f"run-{name}"
        proc = run_cli("launch", str(path), "--run-dir", str(run_dir), "--executor", "local")
        _one_error_line(proc, 1, needle)
        assert not run_dir.exists(), f"{name}: a failed validation must not create the run"


def test_misuse_exits_2() -> None:
    proc = run_cli("launch", "recipes/debug-cpu.yaml", "--executor", "kubernetes")
    assert proc.returncode == 2
    proc = run_cli("launch", "recipes/debug-cpu.yaml", "--json")
    assert proc.returncode == 2 and "--json goes with --dry-run" in proc.stderr


def test_slurm_executor_without_slurm_exits_3(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}  # no sbatch/scontrol on PATH: the controller cannot be reached
    proc = run_cli(
        "launch", "recipes/debug-cpu.yaml", "--executor", "slurm", "--run-dir", str(tmp_path / "r"), env=env
    )
    _one_error_line(proc, 3, "slurm executor requested")
    assert not (tmp_path / "r").exists()


def test_traceback_only_with_debug(tmp_path: Path) -> None:
    proc = run_cli("launch", str(tmp_path / "absent.yaml"), env={"INTELLECT_DEBUG": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_env_var_sets_global_flags(tmp_path: Path) -> None:
    proc = run_cli(
        "launch",
        "recipes/debug-cpu.yaml",
        "--dry-run",
        "--json",
        env={"INTELLECT_LAUNCH_RUN_DIR": str(tmp_path / "x")},
    )
    assert json.loads(proc.stdout)["plan"]["run_dir"] == str(tmp_path / "x")


class TestLocalExecutor:
    """The local executor runs the rendered script through submitit; fake-python stands in for the role
    processes' interpreter so these tests check supervision and exit codes without torch."""

    def _launch(self, run_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run_cli(
            "launch",
            "recipes/debug-cpu.yaml",
            "--executor",
            "local",
            "--run-dir",
            str(run_dir),
            *args,
            env={"INTELLECT_PYTHON": str(FAKE_PYTHON), **env},
        )

    def test_roles_run_and_report_exit(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        proc = self._launch(run_dir)
        assert proc.returncode == 0, proc.stderr
        assert "submitted job" in proc.stderr and "local executor" in proc.stderr
        assert "trainer: exit 0" in proc.stderr and "orchestrator: exit 0" in proc.stderr
        for role in ("trainer", "inference", "orchestrator"):
            log = (run_dir / "logs" / f"{role}-0.log").read_text()
            assert f"fake {role} rank=0" in log
            assert "urls=http://127.0.0.1:8011" in log
        record = json.loads((run_dir / "launch.json").read_text())
        assert record["executor"] == "local" and record["job_id"]
        assert (run_dir / "recipe.resolved.yaml").exists() and (run_dir / "launch.sbatch").exists()

    def test_a_dead_inference_server_does_not_end_the_run(self, tmp_path: Path) -> None:
        """debug-cluster's two servers: the second dies early; trainer and orchestrator finish, the run passes,
        and the loss is recorded in status/events and status/inference.exit."""
        run_dir = tmp_path / "run"
        proc = run_cli(
            "launch", "recipes/debug-cluster.yaml", "--executor", "local", "--run-dir", str(run_dir),
            env={"INTELLECT_PYTHON": str(FAKE_PYTHON), "FAKE_INFERENCE_DIE_RANK": "1", "FAKE_ROLE_SECONDS": "1.5"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert (run_dir / "status" / "inference.exit").read_text().split() == ["1"]
        events = (run_dir / "status" / "events").read_text()
        assert "inference-1 on 127.0.0.1 exited with 1; 1 of 2 inference servers left" in events, events
        assert "fake inference rank=1" in (run_dir / "logs" / "inference-1.log").read_text()
        assert (run_dir / "status" / "run.exit").read_text().strip() == "0"

    def test_failed_role_exits_1_naming_it(self, tmp_path: Path) -> None:
        proc = self._launch(tmp_path / "run", FAKE_TRAINER_EXIT="4")
        assert proc.returncode == 1
        assert "trainer: exit 4" in proc.stderr
        assert "error: the run failed: trainer exited with [4]" in proc.stderr

    def test_existing_run_dir_is_refused_unless_resume(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        assert self._launch(run_dir).returncode == 0
        before = sorted(p.name for p in (run_dir / "submitit").iterdir())
        proc = self._launch(run_dir)
        _one_error_line(proc, 1, "already holds a run")
        assert sorted(p.name for p in (run_dir / "submitit").iterdir()) == before  # nothing submitted
        resumed = self._launch(run_dir, "--resume")
        assert resumed.returncode == 0, resumed.stderr
