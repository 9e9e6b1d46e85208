"""Provisioning with Ansible: inventory checks before any change, then the playbooks through ansible-runner.

The playbooks live in ``playbooks/`` at the repository root; ``paths`` finds them. Nothing here reimplements
what an Ansible module does: this package checks the inventory, runs the playbook and reports per host.
"""

from intellect.provision.inventory import Inventory, load_inventory, validate_inventory
from intellect.provision.runner import HostRecap, ProvisionResult, run_playbook

__all__ = [
    "HostRecap",
    "Inventory",
    "ProvisionResult",
    "load_inventory",
    "run_playbook",
    "validate_inventory",
]
