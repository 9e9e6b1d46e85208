"""Several-node clusters on one machine, for users and tests.

- ``cluster``: ``intellect dev-cluster`` (systemd-nspawn nodes provisioned by the production playbooks);
- ``nodes``: the host plumbing (bridge, overlays, nspawn, cgroups); ``image``: the cached base image and the
  local apt repository; ``inventory``: the generated inventory with only the forced overrides;
- ``loopback``: the light mode, several slurmd on 127.0.0.1 for Slurm-only tests.
"""
