"""Benchmark: cost of a /metrics scrape and of taking in watch events, with a large inventory.

Prints figures; asserts nothing (speed goals live here, not in timed tests). Run:
    .venv/bin/python bench/bench_metrics_scrape.py [environments] [requests-per-environment]
"""

from __future__ import annotations

import sys
import time
import tracemalloc

from prometheus_client import generate_latest

from blacktop.metrics.registry import create_metrics


def main() -> None:
    environments = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    per_env = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    golden_paths = [f"path-{i}" for i in range(20)]
    tracemalloc.start()
    metrics = create_metrics()
    started = time.perf_counter()
    for gp in golden_paths:
        metrics.observe_object("GoldenPath", {"metadata": {"name": gp, "uid": gp}, "spec": {}})
    for e in range(environments):
        env = f"env-{e}"
        metrics.observe_object(
            "Environment",
            {
                "metadata": {"name": env, "uid": env},
                "spec": {
                    "team": f"team-{e % 50}",
                    "tier": ("dev", "staging", "prod")[e % 3],
                    "budget": {"monthly": "500"},
                },
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled"}]},
            },
        )
        for r in range(per_env):
            uid = f"{env}-{r}"
            body = {
                "metadata": {"name": f"r{r}", "namespace": env, "uid": uid},
                "spec": {"goldenPath": golden_paths[r % len(golden_paths)]},
                "status": {"environment": env, "monthlyCost": "12.50"},
            }
            metrics.observe_object("ServiceRequest", body)
            body["status"] |= {
                "lastRun": {"id": "a", "operation": "apply", "result": "Succeeded"},
                "firstReadyTime": "2026-01-01T00:00:00Z",
                "leadTimeSeconds": 30 + r,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned"}],
            }
            metrics.observe_object("ServiceRequest", body)
    events = len(golden_paths) + environments * (1 + 2 * per_env)
    ingest = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()  # it slows every allocation down; time the scrapes without it
    scrapes = 20
    started = time.perf_counter()
    for _ in range(scrapes):
        text = generate_latest(metrics.registry)
    scrape = (time.perf_counter() - started) / scrapes
    print(
        f"objects: {environments} environments, {environments * per_env} service requests, {len(golden_paths)} golden paths"
    )
    print(f"watch events taken in: {events} in {ingest:.2f}s ({ingest / events * 1e6:.1f} us each)")
    lines = text.count(b"\n")
    print(f"scrape: {scrape * 1000:.1f} ms, {len(text) / 1024:.0f} KiB, {lines} lines")
    print(f"peak traced memory: {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
