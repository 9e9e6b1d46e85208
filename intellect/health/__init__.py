"""Node health: metrics in Prometheus → per-node verdicts → a launch gate and a watchdog that drains.

- ``config``    the one home of health facts: the Xid drain list, thresholds, node types (expected GPUs, InfiniBand
                HCAs and rate, mounts) and the dcgm-exporter counters (``Thresholds``, ``NodeType``);
- ``checks``    the PromQL built from them: the checks of the one verdict query and the Xid recording rules;
- ``generate``  writes monitoring/rules/{gpu,ib,node}.yml, the counters file and the monitoring role's templates
                from ``config`` (``python -m intellect.health.generate [--check]``);
- ``prom``      a Prometheus HTTP query client (httpx, injectable transport);
- ``rules``     ONE PromQL query for every node, and pure rules from its answer to verdicts
                (ok / degraded / bad / unknown, each with reasons). No data is unknown, never ok;
- ``gate``      the launch gate: bad or unknown nodes are excluded from the allocation;
- ``watchdog``  drains a node as soon as it turns bad; resumes only nodes it drained, once repaired;
- ``local``     the fast local check Slurm runs as HealthCheckProgram (sysfs InfiniBand, nvidia-smi);
- ``fakedcgm``  a stand-in for NVIDIA's dcgm-exporter 4.5.3-4.8.2 (fake GPUs, fault injection), standard library
                only: the dev cluster runs this very file;
- ``fakenode``  a stand-in for node_exporter v1.12.1's infiniband, filesystem and boot-time metrics (faults);
- ``stack``     a local Prometheus + Alertmanager on 127.0.0.1, for tests, benches and the dev cluster.
"""
