"""The operator's own cost, measured side by side with what it runs, each figure against its target.

    .venv/bin/python bench/operator_bench.py overhead [--requests 20]
    .venv/bin/python bench/operator_bench.py burst [--requests 200]
    .venv/bin/python bench/operator_bench.py scale [--ready 1000 --present 5000]
    .venv/bin/python bench/operator_bench.py all

Each run starts a control plane of its own and the operator as `blacktop run` runs it (default
settings: BLACKTOP_MAX_CONCURRENT_RUNS is the number of cores), with the tiny golden path (no
provider: the tool's own cost, not a cloud's). "Bare" is `tofu init`, `plan -out`, `apply` and
`output -json` of the same module with the same kubernetes state backend, measured in the same run.

- overhead: apply-to-Ready of one request at a time minus a bare run just before it (target p95 <= 1 s);
- burst: N requests created at once, until all are Ready, against the ideal N x bare / run slots
  (target <= 1.25x);
- scale: provisions --ready requests, restarts the operator (tofu runs started: target 0; time until
  every request was found up to date: target <= 30 s; requests seen not Ready meanwhile: 0), then
  measures memory and idle CPU over a minute with --ready and with --present requests (the rest
  refused at once with invalid parameters: present, nothing to do) (targets <= 150 MiB and <= 2 % of
  a core at 5,000).

Admission latency (20 concurrent clients; while 2,000 objects are created) is bench/admission_latency.py.
The machine's load average is printed with the figures: the benchmarks share the machine.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from harness import Bench, environment, is_ready, load, median, quantile, report, request, wait

from blacktop.config import Settings

STAGES = ("queued", "init", "plan", "show", "policy", "apply", "output")


def stage_means(operator: Any) -> str:
    """Mean seconds per request in each stage the operator's metrics time."""
    means = {
        stage: operator.sample("blacktop_stage_duration_seconds_sum", stage=stage)
        / max(1.0, operator.sample("blacktop_stage_duration_seconds_count", stage=stage))
        for stage in STAGES
    }
    return ", ".join(f"{k} {v:.2f} s" for k, v in means.items())


def overhead(requests: int) -> None:
    with Bench("overhead") as bench:
        operator = bench.operator()
        namespace = bench.world()
        bench.bare_run()  # providers installed, caches warm, like the operator's second run
        ready, bare = [], []
        for i in range(requests):
            bare.append(bench.bare_run())
            name = f"seq-{i}"
            started = time.monotonic()
            bench.create(request(name, namespace))
            path = f"/apis/platform.blacktop.dev/v1alpha1/namespaces/{namespace}/servicerequests/{name}"

            def done(path: str = path) -> bool:
                return is_ready(bench.get(path))

            wait(done, 120, f"{name} to be Ready", interval=0.05)
            ready.append(time.monotonic() - started)
        stages = stage_means(operator)
        operator.stop()
    extra = [r - b for r, b in zip(ready, bare, strict=True)]
    print(f"overhead: {requests} requests one at a time, tiny golden path; {load()}")
    print(f"  bare tofu init+plan+apply+output: p50 {median(bare):.2f} s, p95 {quantile(bare, 0.95):.2f} s")
    print(f"  apply-to-Ready:                   p50 {median(ready):.2f} s, p95 {quantile(ready, 0.95):.2f} s")
    print(f"  the operator's run, mean per request: {stages}")
    report("operator overhead p95 (apply-to-Ready - bare)", quantile(extra, 0.95), "s", 1.0)
    report("operator overhead p50", median(extra), "s", 1.0)


def burst(requests: int) -> None:
    with Bench("burst") as bench:
        operator = bench.operator()
        namespace = bench.world()
        bench.bare_run()
        bare = median(bench.bare_run() for _ in range(10))
        slots = Settings.from_env().max_concurrent_runs  # what the operator runs with (the default: cores)
        cpu = operator.cpu_seconds()
        started = time.monotonic()
        bench.create_many([request(f"burst-{i}", namespace) for i in range(requests)])
        created = time.monotonic() - started
        bench.wait_all_ready(namespace, requests, timeout=3600, interval=1.0)
        total = time.monotonic() - started
        runs = operator.sample("blacktop_stage_duration_seconds_count", stage="apply")
        cpu = operator.cpu_seconds() - cpu
        stages = stage_means(operator)
        operator.stop()
    ideal = requests * bare / slots
    print(f"burst: {requests} requests created at once ({created:.1f} s to create), {slots} run slots; {load()}")
    print(f"  bare run (median of 10): {bare:.2f} s; ideal {requests} x {bare:.2f} / {slots} = {ideal:.1f} s")
    print(f"  all Ready after {total:.1f} s ({runs:.0f} applies); the operator used {cpu:.1f} s of CPU")
    print(f"  mean per request: {stages}")
    report("burst: all Ready / ideal", total / ideal, "x", 1.25)


def _settled(operator: Any, count: int) -> bool:
    return operator.sample("blacktop_reconciles_total", kind="ServiceRequest", outcome="unchanged") >= count


def _idle(operator: Any, seconds: float) -> tuple[float, float]:
    """(RSS MiB, % of a core) over ``seconds`` with nothing to do."""
    cpu, started = operator.cpu_seconds(), time.monotonic()
    time.sleep(seconds)  # the measurement window itself: the process is left alone meanwhile
    return operator.rss_mib(), 100 * (operator.cpu_seconds() - cpu) / (time.monotonic() - started)


def scale(ready: int, present: int, idle_seconds: float) -> None:
    with Bench("scale") as bench:
        operator = bench.operator()
        namespace = bench.world()
        started = time.monotonic()
        for first in range(0, ready, 250):  # in batches, so the apiserver is not the bottleneck
            bench.create_many([request(f"r-{i}", namespace) for i in range(first, min(ready, first + 250))])
        bench.wait_all_ready(namespace, ready, timeout=7200, interval=2.0)
        print(f"scale: {ready} requests provisioned in {time.monotonic() - started:.0f} s")
        time.sleep(10)  # let the last status writes and watch events land before measuring at rest
        rss_ready, cpu_ready = _idle(operator, idle_seconds)

        # The restart: a clean stop (rolling upgrade), then a new operator.
        operator.stop()
        seen_not_ready, restarted = 0, time.monotonic()
        operator = bench.operator("restarted")
        while not _settled(operator, ready):
            seen_not_ready = max(seen_not_ready, sum(not is_ready(r) for r in bench.requests(namespace)))
            if time.monotonic() - restarted > 600:
                raise SystemExit("the restarted operator did not settle in 600 s")
            time.sleep(1)
        settled = time.monotonic() - restarted
        runs = operator.sample("blacktop_stage_duration_seconds_count", stage="init")
        rss_restarted = operator.rss_mib()

        # The rest wait with nothing to do: admitted (admission refuses bad parameters), but in a prod
        # environment, where tiny is not offered (TierNotAllowed: a terminal refusal in status).
        parked = "bench-prod"
        bench.create(environment(parked, "bench", tier="prod"))
        bench.wait_ready("environments", parked)
        refused = present - ready
        for first in range(0, refused, 500):
            bench.create_many([request(f"p-{i}", parked) for i in range(first, min(refused, first + 500))])
        wait_for = time.monotonic()

        def looked_at() -> int:
            return sum(
                1 for ns in (namespace, parked) for r in bench.requests(ns) if (r.get("status") or {}).get("stage")
            )

        while looked_at() < present:
            if time.monotonic() - wait_for > 1800:
                raise SystemExit("the refused requests were not all looked at in 1800 s")
            time.sleep(2)
        time.sleep(10)
        rss_present, cpu_present = _idle(operator, idle_seconds)
        operator.stop()
    print(f"  restart with {ready} Ready requests; {load()}")
    report("tofu runs started after the restart", runs, "runs", 0)
    report("time until every request was found up to date", settled, "s", 30)
    report("requests seen not Ready meanwhile", seen_not_ready, "reqs", 0)
    print(f"  idle, {idle_seconds:.0f} s windows (RSS after the restart: {rss_restarted:.0f} MiB)")
    report(f"RSS with {ready} Ready requests", rss_ready, "MiB", 150)
    report(f"CPU with {ready} Ready requests", cpu_ready, "%core", 2)
    report(f"RSS with {present} requests present", rss_present, "MiB", 150)
    report(f"CPU with {present} requests present", cpu_present, "%core", 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["overhead", "burst", "scale", "all"])
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--ready", type=int, default=1000)
    parser.add_argument("--present", type=int, default=5000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    if args.which in ("overhead", "all"):
        overhead(args.requests or 20)
    if args.which in ("burst", "all"):
        burst(args.requests or 200)
    if args.which in ("scale", "all"):
        scale(args.ready, args.present, args.idle_seconds)


if __name__ == "__main__":
    main()
