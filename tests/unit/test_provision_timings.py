"""Task timings folded from ansible-runner events: the recap names the slowest tasks, on their slowest host."""

from __future__ import annotations

from intellect.provision.runner import EventCollector, ProvisionResult


def _event(kind: str, host: str, task: str, duration: float | None) -> dict:
    data = {"host": host, "task": task, "res": {"changed": False}}
    if duration is not None:
        data["duration"] = duration
    return {"event": kind, "event_data": data}


def test_slowest_tasks_are_ranked_by_their_slowest_host() -> None:
    seen: list[str] = []
    collector = EventCollector(lambda e: seen.append(e["event"]))
    for event in (
        _event("playbook_on_task_start", "", "Install Slurm", None),
        _event("runner_on_ok", "node1", "Install Slurm", 30.5),
        _event("runner_on_ok", "node2", "Install Slurm", 12.0),
        _event("runner_on_skipped", "node1", "Render slurm.conf", 0.1),
        _event("runner_on_failed", "node2", "Render slurm.conf", 2.25),
        _event("runner_on_ok", "node1", "Start munge", 4.0),
    ):
        collector(event)
    result = ProvisionResult(0, task_times=list(collector.times.values()))
    assert [(t.task, t.max_s, t.total_s, t.hosts) for t in result.slowest(2)] == [
        ("Install Slurm", 30.5, 42.5, 2),
        ("Start munge", 4.0, 4.0, 1),
    ]
    assert result.to_json()["slowest_tasks"][2] == {
        "task": "Render slurm.conf",
        "max_s": 2.25,
        "total_s": 2.35,
        "hosts": 2,
    }
    assert len(seen) == 6  # every event still reaches the progress display
