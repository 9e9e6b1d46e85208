"""The shared venv of intellect (playbooks/roles/slurm/tasks/venv.yml), installed for real on this machine.

The production inventory's install host (login01, the first login node) runs with a local connection; the venv goes
to a temporary folder that stands for the software share. The source is a copy of this checkout's package (so that
edits made meanwhile cannot change it between the runs), so the role builds a wheel of it on the control machine
first, copies it to the share and installs it with pip (``--no-deps --no-index``: the test is offline; a site gives
its index in ``slurm_intellect_pip_args``). A changed source of the same version replaces the installed copy. The apt task for python3-venv is skipped (tag
``slurm_venv_packages``): this machine has it, and a unit test does not run apt. A second run changes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ansible", reason="ansible-core is in the ops extra")

from intellect.provision.paths import ansible_env, ansible_tool  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _source(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "intellect", src / "intellect", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _run(venv: Path, src: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        ansible_tool("ansible-playbook"),
        "-i",
        str(ROOT / "inventory" / "production"),
        str(ROOT / "tests" / "fixtures" / "ansible" / "playbooks" / "venv.yml"),
        "--limit",
        "login01",
        "--skip-tags",
        "slurm_venv_packages",
        "-e",
        json.dumps(
            {
                "ansible_python_interpreter": sys.executable,
                "slurm_intellect_venv_dir": str(venv),
                "slurm_intellect_source": str(src),
                "slurm_intellect_extras": [],
                "slurm_intellect_pip_args": "--no-deps --no-index",
                "slurm_intellect_python": sys.executable,
            }
        ),
    ]
    env = ansible_env({"ANSIBLE_CACHE_PLUGIN": "memory"})
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_shared_venv_is_installed_from_the_checkout_and_idempotent(tmp_path: Path) -> None:
    venv = tmp_path / "share" / "intellect" / "venv"
    src = _source(tmp_path)
    first = _run(venv, src)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    wheels = sorted(p.name for p in (venv.parent / "wheels").iterdir())
    assert len(wheels) == 1 and re.fullmatch(r"intellect-[0-9.]+-py3-none-any\.whl", wheels[0]), wheels
    # where the venv finds intellect (its own copy, not this checkout); --no-deps left its dependencies out
    code = "import importlib.util as u; print(u.find_spec('intellect.health.config').origin)"
    res = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert res.returncode == 0 and res.stdout.startswith(str(venv)), res.stdout + res.stderr
    assert (venv / "bin" / "intellect").exists()  # what monitoring_intellect_bin runs
    second = _run(venv, src)
    assert second.returncode == 0, second.stdout[-3000:]
    assert re.search(r"login01\s+: ok=\d+\s+changed=0 ", second.stdout), second.stdout[-1500:]
    marker = "SHARED_VENV_TEST = 1\n"
    (src / "intellect" / "__init__.py").write_text((src / "intellect" / "__init__.py").read_text() + marker)
    third = _run(venv, src)
    assert third.returncode == 0, third.stdout[-3000:]
    [installed] = venv.glob("lib/python*/site-packages/intellect/__init__.py")
    assert installed.read_text().endswith(marker)  # the same version, reinstalled from the changed wheel
