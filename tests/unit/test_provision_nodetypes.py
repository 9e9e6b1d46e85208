"""Node types, declared: slurm.conf and gres.conf come from the inventory's node types, so a node without facts
(unreachable, or left out by --limit) is still declared; a node whose discovered hardware disagrees with its type is
reported by name and drained with the finding as its reason, and the configuration does not change.

One fact, one home: the production inventory's ``slurm_node_types`` (group_vars/all.yml) adds what Slurm needs
(CPU topology, memory, the GPU model and affinity) to the hardware that intellect.health.config ``NODE_TYPES``
expects; the fields both know (GPUs, InfiniBand ports and rate) must agree, which ``test_node_types_agree_with_the_
health_config`` checks here and the role's validate.yml checks on every run (``slurm_node_type_errors``).

The renders go through Ansible with the real role templates (``render`` of test_provision_golden); the drain tasks
(playbooks/roles/slurm/tasks/drain.yml) run for real on this machine with sinfo and scontrol stand-ins on PATH.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ansible", reason="ansible-core is in the ops extra")

from intellect.health.config import NODE_TYPES  # noqa: E402
from intellect.provision.paths import ansible_env, ansible_tool  # noqa: E402
from tests.conftest import load_module  # noqa: E402
from tests.unit.test_provision_golden import FIXTURES, GOLDEN, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROD = ROOT / "inventory" / "production"
H200_FACTS = FIXTURES / "h200" / "facts.json"
ROLES = ROOT / "playbooks" / "roles"


sc = load_module(ROOT / "playbooks" / "filter_plugins" / "slurm_conf.py")
PROD_VARS = yaml.safe_load((PROD / "group_vars" / "all.yml").read_text())
H200 = PROD_VARS["slurm_node_types"]["h200"]


def h200_facts() -> dict[str, Any]:
    return json.loads(H200_FACTS.read_text())


def seven_gpus() -> dict[str, Any]:
    hw = h200_facts()
    hw["gpus"] = hw["gpus"][:7]
    return hw


def fewer_cores() -> dict[str, Any]:
    hw = h200_facts()
    hw["cpu"].update(cores_per_socket=48, cpus=192)
    return hw


def slow_port() -> dict[str, Any]:
    hw = h200_facts()
    hw["ib"][3]["rate_gbps"] = 200
    return hw


def _write(tmp: Path, name: str, hw: dict[str, Any]) -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(hw))
    return str(path)


SEVEN = "node type h200 expects 8 GPUs, found 7"
CORES = "node type h200 expects 2 x 56 x 2 (sockets x cores x threads), found 2 x 48 x 2"
PORT = "node type h200 expects 8 InfiniBand ports ACTIVE at 400 Gb/s, found 7 (mlx5_3/1 ACTIVE 200 Gb/s)"


def test_nodes_without_facts_are_declared_by_their_type(tmp_path: Path) -> None:
    """`--limit 'all:!gpu-001'` (the issue's reproduction) and a run that reaches no compute node at all render
    the same slurm.conf and gres.conf as a run with every node's facts: the production golden files."""
    for limit in ("all:!gpu-001", "slurm_controller"):
        out = tmp_path / limit.replace(":", "_").replace("!", "not_")
        out.mkdir()
        rendered = render(PROD, H200_FACTS, out, limit=limit)
        for name in ("slurm.conf", "gres.conf"):
            assert rendered[name] == (GOLDEN / "production" / name).read_text(), (limit, name)
        assert json.loads((out / "node-types.json").read_text()) == {}
    gres = (GOLDEN / "production" / "gres.conf").read_text()
    assert "NodeName=gpu-[001-064] Name=gpu Type=h200 File=/dev/nvidia[4-7] Cores=56-111" in gres


def test_disagreeing_nodes_are_reported_and_the_configuration_stays(tmp_path: Path) -> None:
    host_facts = {
        "gpu-007": _write(tmp_path, "seven", seven_gpus()),
        "gpu-012": _write(tmp_path, "cores", fewer_cores()),
        "gpu-020": _write(tmp_path, "port", slow_port()),
    }
    out = tmp_path / "out"
    out.mkdir()
    rendered = render(PROD, H200_FACTS, out, extra_vars={"render_host_facts": host_facts})
    for name in ("slurm.conf", "gres.conf"):
        assert rendered[name] == (GOLDEN / "production" / name).read_text(), name
    assert json.loads((out / "node-types.json").read_text()) == {
        "gpu-007": SEVEN,
        "gpu-012": CORES,
        "gpu-020": PORT,
    }


def test_findings_name_each_difference() -> None:
    assert sc.node_type_problems("h200", H200, h200_facts()) == ""
    hw = seven_gpus()
    hw["memory_mb"] = 1031680
    assert sc.node_type_problems("h200", H200, hw) == (
        f"{SEVEN}; expects at least 2063360 MiB of memory, found 1031680 MiB"
    )
    h100 = h200_facts()
    for g in h100["gpus"]:
        g["model"] = "NVIDIA H100 80GB HBM3"
    assert sc.node_type_problems("h200", H200, h100) == (
        "node type h200 expects NVIDIA H200 GPUs, found NVIDIA H100 80GB HBM3"
    )
    gap = h200_facts()
    gap["gpus"][7].update(minor=8, device="/dev/nvidia8")
    assert sc.node_type_problems("h200", H200, gap) == (
        "node type h200 expects GPU device files /dev/nvidia[0-7], found /dev/nvidia[0-6,8]"
    )
    swapped = h200_facts()
    swapped["gpus"][0]["cores"], swapped["gpus"][4]["cores"] = "56-111", "0-55"
    assert sc.node_type_problems("h200", H200, swapped) == (
        "node type h200 expects each GPU on its node type's cores, found /dev/nvidia0 on cores 56-111 (not 0-55), "
        "/dev/nvidia4 on cores 0-55 (not 56-111)"
    )
    down = h200_facts()
    for port in down["ib"][:5]:
        port["state"] = "DOWN"
    text = sc.node_type_problems("h200", H200, down)
    assert text.startswith(
        "node type h200 expects 8 InfiniBand ports ACTIVE at 400 Gb/s, found 3 (mlx5_0/1 DOWN"
    )
    assert text.endswith(", ...)") and len("provision: " + text) <= 200
    # the 200 Gb/s Ethernet NIC (mlx5_8) never counts as an InfiniBand port
    assert not [p for p in h200_facts()["ib"] if p["hca"] == "mlx5_8" and p["link_layer"] == "InfiniBand"]


def test_a_type_may_leave_fields_to_discovery() -> None:
    """The dev cluster's kind of node: 2 stand-in GPUs declared, CPUs and memory those of the machine it runs on."""
    dev_hw = json.loads((FIXTURES / "dev" / "facts.json").read_text())
    types = {"dev": {"gpus": 2, "gpu_model": "fake", "gpu_device_prefix": "/dev/fakegpu"}}
    hostvars = {
        "node1": {"intellect_node_type": "dev", "intellect_hw": dev_hw},
        "node2": {"intellect_node_type": "dev"},
    }
    missing = (
        "host node2 has no 'intellect_hw' facts and its node type 'dev' does not declare sockets, "
        "cores_per_socket, threads_per_core, memory_mb: declare them in slurm_node_types.dev"
    )
    with pytest.raises(ValueError, match=re.escape(missing)):
        sc.slurm_node_lines(["node1", "node2"], hostvars, 1024, types)
    assert sc.slurm_gres_lines(["node1", "node2"], hostvars, types) == [
        "NodeName=node[1-2] Name=gpu Type=fake File=/dev/fakegpu[0-1]"
    ]
    assert sc.slurm_node_lines(["node1"], hostvars, 1024, types) == [
        "NodeName=node1 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=22528 "
        "Gres=gpu:fake:2 State=UNKNOWN"
    ]
    assert sc.slurm_node_type_problems(["node1", "node2"], hostvars, types) == {}
    assert sc.slurm_checked_hosts(["node1", "node2"], hostvars, types) == ["node1"]


def _sinfo(*rows: str) -> str:
    return "".join(r + "\n" for r in rows)


def test_drain_plan_keeps_a_persons_reason_and_resumes_only_its_own() -> None:
    findings = {"gpu-001": SEVEN, "gpu-002": SEVEN, "gpu-003": SEVEN, "gpu-004": SEVEN, "gpu-005": PORT}
    ours = "[intellect] alice 2025-01-01T00:00:00Z: provision: "
    sinfo = _sinfo(
        "gpu-001|idle|Unknown|none",
        f"gpu-002|drained|root|{ours}{SEVEN}",  # drained for this already: nothing to do
        "gpu-003|drained|bob|replacing the riser card",  # a person's drain stays
        "gpu-004|drained|slurm|gres/gpu count reported lower than configured (7 < 8)",  # Slurm's own: replaced
        f"gpu-005|draining|root|{ours}{SEVEN}",  # our older finding, now another: replaced
        f"gpu-006|drained|root|{ours}{SEVEN}",  # ours, and it agrees now: resumed
        "gpu-007|drained|bob|maintenance",  # a person's, agrees now: stays drained
        "gpu-008|drained|root|[intellect] root 2025-01-01T00:00:00Z: epilog: job 42 left 1 process(es)",
    )
    checked = [f"gpu-{i:03d}" for i in range(1, 9)]
    plan = sc.slurm_drain_plan(sinfo, findings, checked)
    assert plan == {
        "drain": {
            "gpu-001": f"provision: {SEVEN}",
            "gpu-004": f"provision: {SEVEN}",
            "gpu-005": f"provision: {PORT}",
        },
        "resume": ["gpu-006"],
        "kept": {"gpu-003": "replacing the riser card"},
    }
    # before slurmctld answers (check mode, a fresh cluster) every finding is a drain
    assert sc.slurm_drain_plan("", {"gpu-001": SEVEN}, ["gpu-001", "gpu-002"])["drain"] == {
        "gpu-001": f"provision: {SEVEN}"
    }


def test_drain_tasks_run_scontrol_with_the_reason(tmp_path: Path) -> None:
    """tasks/drain.yml for real, on four compute nodes: reads their state with sinfo, drains gpu-007 (7 GPUs) with
    the finding as the reason, resumes gpu-009 (drained by a provision, whole again), leaves gpu-012's person-set
    reason, and leaves gpu-013 (whole, not drained) alone."""
    stub = tmp_path / "bin"
    stub.mkdir()
    log = tmp_path / "calls"
    ours = f"[intellect] alice 2025-01-01T00:00:00Z: provision: {SEVEN}"
    (tmp_path / "sinfo.out").write_text(
        _sinfo("gpu-007|idle|Unknown|none", f"gpu-009|drained|root|{ours}", "gpu-012|drained|bob|new DIMMs")
    )
    for name in ("sinfo", "scontrol"):
        (stub / name).write_text(
            f'#!/bin/sh\nprintf "%s\\0" {name} "$@" >> {log}; printf "\\n" >> {log}\n'
            + (f"cat {tmp_path / 'sinfo.out'}\n" if name == "sinfo" else "")
        )
        (stub / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    facts = {
        "gpu-007": _write(tmp_path, "seven", seven_gpus()),
        "gpu-012": _write(tmp_path, "cores", fewer_cores()),
    }
    argv = [
        ansible_tool("ansible-playbook"),
        "-i",
        str(PROD),
        str(FIXTURES / "playbooks" / "drain.yml"),
        "--limit",
        "ctl01,gpu-007,gpu-009,gpu-012,gpu-013",
        "-e",
        json.dumps(
            {
                "render_facts_file": str(H200_FACTS),
                "render_dir": str(out),
                "render_host_facts": facts,
                "ansible_python_interpreter": sys.executable,
            }
        ),
    ]
    path = f"{stub}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = ansible_env(
        {"ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_FORKS": "64", "PATH": path, "USER": "carol"}
    )
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    calls = [line.strip("\0").split("\0") for line in log.read_text().splitlines() if line]
    # only the compute nodes of this run are judged (the others could only have cached facts)
    assert calls[0][:4] == ["sinfo", "--noheader", "--Node", "--nodes=gpu-[007,009,012-013]"]
    assert calls[0][4] == "--format=%N|%T|%u|%E"
    drain, resume = calls[1], calls[2]
    assert drain[:4] == ["scontrol", "update", "NodeName=gpu-007", "State=DRAIN"]
    assert re.fullmatch(
        rf"Reason=\[intellect\] carol \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ: provision: {SEVEN}", drain[4]
    )
    assert resume == ["scontrol", "update", "NodeName=gpu-009", "State=RESUME"]
    assert len(calls) == 3  # gpu-012 keeps bob's reason
    assert (
        "gpu-012" in res.stdout and "new DIMMs" in res.stdout
    )  # reported by name, with the reason that stays
    assert "gpu-007" in res.stdout and SEVEN in res.stdout


def test_node_types_agree_with_the_health_config() -> None:
    """The inventory's node types and intellect.health.config NODE_TYPES: the fields both know are equal, every
    type a host names is known to both, and the role's own check (validate.yml) finds nothing."""
    types = PROD_VARS["slurm_node_types"]
    compute = yaml.safe_load((PROD / "group_vars" / "slurm_compute.yml").read_text())
    assert compute["intellect_node_type"] in types and compute["intellect_node_type"] in NODE_TYPES
    for name, nt in types.items():
        health = NODE_TYPES[name]
        assert (nt["gpus"], nt["ib_ports"], nt["ib_rate_gbps"]) == (
            health.gpus,
            health.ib_ports,
            health.ib_rate_gbps,
        )
    hostvars = {f"gpu-{i:03d}": {"intellect_node_type": "h200"} for i in range(1, 65)}
    assert sc.slurm_node_type_errors(types, sorted(hostvars), hostvars) == []
    wrong = copy.deepcopy(types)
    wrong["h200"]["gpus"] = 4
    wrong["h200"]["gpu_cores"] = wrong["h200"]["gpu_cores"][:4]
    assert sc.slurm_node_type_errors(wrong, sorted(hostvars), hostvars) == [
        "slurm_node_types.h200.gpus is 4 but intellect.health.config NODE_TYPES['h200'] says 8: one node type, one "
        "meaning; change one, or give the site's type its own name"
    ]


def test_node_type_errors_name_the_field() -> None:
    hostvars = {"gpu-001": {"intellect_node_type": "h100"}, "gpu-002": {"intellect_node_type": "generic"}}
    bad = {"h200": {"gpus": 8, "gpu_cores": ["0-55"], "cores": 56, "memory_mb": "2T"}}
    assert sc.slurm_node_type_errors(bad, ["gpu-001", "gpu-002"], hostvars, health_types={}) == [
        "slurm_node_types.h200.cores is not a node type field (gpus, gpu_model, gpu_cores, gpu_device_prefix, "
        "sockets, cores_per_socket, threads_per_core, memory_mb, ib_ports, ib_rate_gbps, description)",
        "slurm_node_types.h200.memory_mb: '2T' is not 'the least MemTotal (MiB) a node of this type shows; "
        "RealMemory = this - the reserve'",
        "intellect_node_type 'h100' of gpu-001 is not declared in slurm_node_types (declared: generic, h200)",
    ]
    half = {"h200": {"gpus": 8, "gpu_cores": ["0-55"]}}
    assert sc.slurm_node_type_errors(half, [], {}, health_types={}) == [
        "slurm_node_types.h200 declares 8 GPUs but no gpu_model (as nvidia-smi reports it)",
        "slurm_node_types.h200.gpu_cores needs one entry per GPU (8), in minor order",
    ]


def test_health_check_program_and_venv_have_one_home() -> None:
    """HealthCheckProgram is the program the monitoring role installs, and the monitoring role's intellect is the
    shared venv the slurm role installs: the slurm role's defaults are the one home, checked against them."""
    slurm = yaml.safe_load((ROLES / "slurm" / "defaults" / "main.yml").read_text())
    monitoring = yaml.safe_load((ROLES / "monitoring" / "defaults" / "main.yml").read_text())
    tasks = yaml.safe_load((ROLES / "monitoring" / "tasks" / "configure.yml").read_text())
    [install] = [
        t for t in tasks if t.get("ansible.builtin.template", {}).get("src") == "intellect-healthcheck.j2"
    ]
    assert slurm["slurm_health_check_program"] == install["ansible.builtin.template"]["dest"]
    assert "slurm_health_check_program" not in PROD_VARS  # the role's default, not a second copy
    venv = slurm["slurm_intellect_venv_dir"]
    assert monitoring["monitoring_intellect_bin"] == f"{venv}/bin/intellect"
    assert monitoring["monitoring_intellect_python"] == f"{venv}/bin/python"
