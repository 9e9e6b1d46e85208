"""Golden slurm.conf, gres.conf and cgroup.conf, rendered by the real slurm role templates through Ansible.

Two inventories: the production example (64 H200 nodes, facts from tests/fixtures/ansible/h200/facts.json) and a
generated 3-node dev inventory (facts recorded from a dev-cluster node: tests/fixtures/ansible/dev/facts.json).
To regenerate the references after a deliberate change, run:
    INTELLECT_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_provision_golden.py
and review the diff of tests/golden/ansible/ before committing it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("ansible", reason="ansible-core is in the ops extra")

from intellect.devcluster.inventory import dev_inventory, write_inventory  # noqa: E402
from intellect.devcluster.nodes import Net  # noqa: E402
from intellect.provision.paths import ansible_env, ansible_tool, playbooks_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ansible"
GOLDEN = ROOT / "tests" / "golden" / "ansible"
FILES = ("slurm.conf", "gres.conf", "cgroup.conf")


def render(
    inventory: Path, facts: Path, out: Path, extra_vars: dict | None = None, limit: str | None = None
) -> dict[str, str]:
    """The role's configuration files rendered into ``out`` (the Epilog too: ``out/epilog-cleanup.sh``, and the
    node-type findings: ``out/node-types.json``). Hosts that ``limit`` leaves out have no facts."""
    argv = [
        ansible_tool("ansible-playbook"),
        "-i",
        str(inventory),
        str(playbooks_dir() / "render.yml"),
        "-e",
        f"render_facts_file={facts}",
        "-e",
        f"render_dir={out}",
    ]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if limit:
        argv += ["--limit", limit]
    env = ansible_env({"ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_FORKS": "64"})
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return {name: (out / name).read_text() for name in FILES}


def check_golden(name: str, rendered: dict[str, str]) -> None:
    for fname, text in rendered.items():
        ref = GOLDEN / name / fname
        if os.environ.get("INTELLECT_REGEN_GOLDEN") == "1":
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(text)
        assert text == ref.read_text(), f"{ref} differs; see this module's docstring to regenerate"


def test_production_h200(tmp_path: Path) -> None:
    rendered = render(ROOT / "inventory" / "production", FIXTURES / "h200" / "facts.json", tmp_path)
    check_golden("production", rendered)
    conf = rendered["slurm.conf"]
    assert "ProctrackType=proctrack/cgroup" in conf and "TaskPlugin=task/cgroup,task/affinity" in conf
    assert "NodeName=gpu-[001-064] CPUs=224" in conf and "Gres=gpu:h200:8" in conf
    assert len([ln for ln in conf.splitlines() if ln.startswith("NodeName=")]) == 1  # O(shapes), not O(nodes)
    timeouts = {"SlurmdTimeout=300", "UnkillableStepTimeout=180", "Epilog=/etc/slurm/epilog.d/*"}
    assert timeouts <= set(conf.splitlines())
    lifecycle = {"PrologFlags=Contain", "HealthCheckProgram=/usr/local/bin/intellect-healthcheck"}
    assert lifecycle <= set(conf.splitlines())
    assert "CgroupPlugin=cgroup/v2" in rendered["cgroup.conf"]
    assert "File=/dev/nvidia[0-3] Cores=0-55" in rendered["gres.conf"]


def test_dev_inventory(tmp_path: Path) -> None:
    inv = write_inventory(
        tmp_path / "inventory", dev_inventory(3, Net(), Path("/var/lib/intellect/devcluster"), "not-a-secret")
    )
    out = tmp_path / "out"
    out.mkdir()
    rendered = render(inv, FIXTURES / "dev" / "facts.json", out)
    check_golden("dev", rendered)
    conf = rendered["slurm.conf"]
    assert "ProctrackType=proctrack/linuxproc" in conf and "TaskPlugin=task/affinity" in conf
    assert "NodeName=node[1-3]" in conf and "Gres=gpu:fake:2" in conf
    assert "SlurmdTimeout=10" in conf.splitlines()  # a powered-off dev node is DOWN in seconds, not minutes
    # Contain needs proctrack/cgroup; the dev cluster's tests drain and resume nodes themselves (no health check)
    assert "PrologFlags" not in conf and "HealthCheckProgram" not in conf
    assert "File=/dev/fakegpu[0-1]" in rendered["gres.conf"]
