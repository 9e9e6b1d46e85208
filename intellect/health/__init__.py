"""Node health: metrics in Prometheus → per-node verdicts → a launch gate and a watchdog that drains.

- ``prom``      a Prometheus HTTP query client (httpx, injectable transport);
- ``config``    thresholds with documented defaults (``Thresholds``);
- ``rules``     ONE PromQL query for every node, and pure rules from its answer to verdicts
                (ok / degraded / bad / unknown, each with reasons). No data is unknown, never ok;
- ``gate``      the launch gate: bad or unknown nodes are excluded from the allocation;
- ``watchdog``  drains a node as soon as it turns bad; resumes only nodes it drained, after a hold time;
- ``local``     the fast local check Slurm runs as HealthCheckProgram (sysfs InfiniBand, nvidia-smi);
- ``fakedcgm``  a stand-in for NVIDIA's dcgm-exporter (fake GPUs, fault injection) for machines without GPUs;
- ``stack``     a local Prometheus + Alertmanager on 127.0.0.1, for tests, benches and the dev cluster.
"""
