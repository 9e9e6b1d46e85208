"""Inventory checks run before any change on any node: exclusive groups, the munge key, unknown variables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("ansible", reason="ansible-core is in the ops extra")

from intellect.cli import provision as cli_provision  # noqa: E402
from intellect.errors import IntellectError  # noqa: E402
from intellect.provision import inventory as inv_mod  # noqa: E402
from intellect.provision.inventory import check_inventory, known_variables, load_inventory  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prod(tmp_path: Path) -> Path:
    """A copy of the production example whose munge key exists."""
    dest = tmp_path / "inv"
    shutil.copytree(ROOT / "inventory" / "production", dest)
    key = tmp_path / "munge.key"
    key.write_bytes(b"k" * 1024)
    all_yml = dest / "group_vars" / "all.yml"
    all_yml.write_text(all_yml.read_text().replace("/etc/intellect/munge.key", str(key)))
    return dest


def test_production_example_is_valid(prod: Path) -> None:
    inv = load_inventory(prod)
    assert len(inv.members("slurm_compute")) == 64
    assert inv_mod.validate_inventory(inv) == []


def test_every_role_declares_its_variables() -> None:
    known = known_variables()
    for role in (ROOT / "playbooks" / "roles").iterdir():
        defaults = (role / "defaults" / "main.yml").read_text()
        names = [ln.split(":")[0] for ln in defaults.splitlines() if ln and ln[0].isalpha()]
        assert names, role
        missing = [n for n in names if n not in known]
        assert not missing, f"{role.name}: {missing} missing from meta/argument_specs.yml"
        assert all(n.startswith(role.name + "_") for n in names), role.name


def test_host_in_two_exclusive_groups(prod: Path) -> None:
    hosts = prod / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("gpu-[001:064]:", "gpu-[001:064]:\n            login01:"))
    problems = inv_mod.validate_inventory(load_inventory(prod))
    assert problems == ["host login01 is in both 'slurm_compute' and 'slurm_login', which exclude each other"]


def test_missing_munge_key(prod: Path, tmp_path: Path) -> None:
    (tmp_path / "munge.key").unlink()
    with pytest.raises(
        IntellectError, match=r"munge key .*munge.key \(munge_key_file\) does not exist; nothing"
    ):
        check_inventory(load_inventory(prod))


def test_unknown_variable_names_the_fix(prod: Path) -> None:
    (prod / "group_vars" / "slurm_compute.yml").write_text("slurm_partitons: []\n")
    problems = inv_mod.validate_inventory(load_inventory(prod))
    assert problems == [
        "unknown variable 'slurm_partitons' (on gpu-001 and 63 other host(s)); did you mean 'slurm_partitions'?"
    ]


def test_cli_fails_in_one_line_before_running_anything(
    prod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "munge.key").unlink()
    calls: list[object] = []
    monkeypatch.setattr("intellect.provision.runner.run_playbook", lambda *a, **k: calls.append(a))
    result = CliRunner().invoke(cli_provision.provision_cmd, ["-i", str(prod)])
    assert isinstance(result.exception, IntellectError) and calls == []
    assert "nothing was changed" in str(result.exception) and "\n" not in str(result.exception)
