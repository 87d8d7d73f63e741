"""Portal page loads with 1,000 ServiceRequests in the cluster: p50, p95 and max per page.

Starts a local control plane and the operator with its portal (sign-in by token, as the chart runs
it), installs the tiny golden path, 40 environments of 10 teams and 1,000 requests in a realistic
mix: some provisioned for real (Ready), some pending (a golden path that does not exist yet, retried
every 30 s: the operator stays busy while the pages are measured), the rest failed for good (a tier
their golden path is not offered in). Then it loads every page over HTTP, as a platform admin (cluster-admin) and as a
tenant (the owner of one environment, whose access is checked namespace by namespace), and prints
the figures. The operator's event-loop lag is scraped alongside, to show that rendering pages does
not stall reconciles. Prints figures; asserts nothing.

    .venv/bin/python bench/portal_pages.py [--requests 1000] [--ready 30] [--pending 100] [--loads 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from harness import start_operator, wait

from blacktop.kube.client import KubeClient
from blacktop.kube.errors import ConflictError, KubeApiError
from blacktop.kube.install import install
from blacktop.kube.resources import SERVICEREQUESTS
from blacktop.localcluster import LocalCluster
from blacktop.toolbox import find_tool

REPO = Path(__file__).resolve().parents[1]
API = "platform.blacktop.dev/v1alpha1"
TEAMS = 10
ENVIRONMENTS = 40  # 4 per team: 2 dev, 2 prod


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [str(find_tool("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def environment(index: int) -> dict[str, Any]:
    team = f"team-{index % TEAMS}"
    tier = "dev" if index % 4 < 2 else "prod"
    spec: dict[str, Any] = {"team": team, "tier": tier, "budget": {"monthly": "500", "currency": "USD"}}
    if index == 0:
        spec["owners"] = [{"kind": "User", "name": "system:serviceaccount:bench-accounts:tenant"}]
    return {"apiVersion": API, "kind": "Environment", "metadata": {"name": f"bench-{index:02d}"}, "spec": spec}


def request(index: int, ready: int, pending: int) -> dict[str, Any]:
    """Request ``index``: the first ``ready`` provision for real (tiny, in dev); the next ``pending``
    name a golden path that does not exist (GoldenPathNotFound, retried every 30 s: the operator
    keeps working while the pages load); the rest fail for good, in a tier their golden path is not
    offered in (TierNotAllowed, Stalled: no more runs)."""
    env = index % ENVIRONMENTS
    dev = env % 4 < 2
    if index < ready + pending and not dev:
        env -= 2  # the provisioned and the pending ones all in dev
        dev = True
    if index < ready:
        golden = "tiny"
    elif index < ready + pending:
        golden = "coming-soon"
    else:
        golden = "tiny-prod" if dev else "tiny"
    return {
        "apiVersion": API,
        "kind": "ServiceRequest",
        "metadata": {"name": f"svc-{index:04d}", "namespace": f"bench-{env:02d}"},
        "spec": {"goldenPath": golden, "parameters": {"size": ("small", "medium", "large")[index % 3]}},
    }


async def create_all(client: KubeClient, objects: list[dict[str, Any]], parallel: int = 2) -> None:
    """Create every object, a few at a time; an admission timeout on a loaded machine is tried again."""
    gate = asyncio.Semaphore(parallel)

    async def one(obj: dict[str, Any]) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    await client.create(obj)
                    return
                except ConflictError:
                    return  # an earlier attempt got through after all
                except KubeApiError as exc:
                    if exc.status < 500 or attempt == 4:
                        raise
                    await asyncio.sleep(1.0 + attempt)

    await asyncio.gather(*(one(o) for o in objects))


def settled(client: KubeClient, total: int, ready: int) -> bool:
    items = asyncio.run(client.list(SERVICEREQUESTS))
    with_reason = sum(
        1 for r in items if any(c.get("type") == "Ready" for c in (r.get("status") or {}).get("conditions", []))
    )
    provisioned = sum(
        1
        for r in items
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (r.get("status") or {}).get("conditions", [])
        )
    )
    print(f"    {with_reason}/{total} requests reconciled, {provisioned}/{ready} Ready", flush=True)
    return with_reason >= total and provisioned >= ready


def load(url: str, token: str) -> tuple[float, int, int, float]:
    """(milliseconds, status, bytes, server render ms) of one GET on a new connection."""
    started = time.perf_counter()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            body, status, timing = response.read(), response.status, response.headers.get("Server-Timing", "")
    except urllib.error.HTTPError as exc:
        body, status, timing = exc.read(), exc.code, ""
    except OSError:  # not listening (yet)
        body, status, timing = b"", 0, ""
    elapsed = (time.perf_counter() - started) * 1000
    found = re.search(r"dur=([0-9.]+)", timing)
    return elapsed, status, len(body), float(found.group(1)) if found else 0.0


def lag(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^blacktop_event_loop_lag_seconds ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def measure(base: str, who: str, token: str, pages: list[str], loads: int, metrics_port: int) -> None:
    print(f"\n{who}: {loads} loads per page (after 3 warm-ups), new connection each time")
    print(f"  {'page':<72} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'render':>8} {'KiB':>6}  status")
    worst_lag = 0.0
    for page in pages:
        for _ in range(3):
            load(base + page, token)
        samples = [load(base + page, token) for _ in range(loads)]
        worst_lag = max(worst_lag, lag(metrics_port))
        times = sorted(s[0] for s in samples)
        p95 = times[max(0, int(len(times) * 0.95) - 1)]
        render = statistics.median(s[3] for s in samples)
        statuses = sorted({s[1] for s in samples})
        print(
            f"  {page:<72} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f} {render:8.1f} "
            f"{samples[-1][2] / 1024:6.1f}  {statuses}"
        )
    print(f"  largest event-loop lag the operator reported meanwhile: {worst_lag * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--ready", type=int, default=30, help="how many are provisioned for real (OpenTofu runs)")
    parser.add_argument("--pending", type=int, default=100, help="how many wait for a golden path (retried)")
    parser.add_argument("--loads", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blacktop-bench-portal-"))
    with LocalCluster(work / "cluster") as cluster:
        config = cluster.kubeconfig
        client = KubeClient.from_kubeconfig(config)
        asyncio.run(install(client))
        operator = start_operator(config, work / "operator.log", portal_auth="token")
        ports = operator.ports
        base = f"http://127.0.0.1:{ports['portal']}"
        try:
            wait(lambda: load(base + "/healthz", "")[1] == 200, 120, "the portal")
            tiny = yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text())
            prod_only = {**tiny, "metadata": {"name": "tiny-prod"}, "spec": {**tiny["spec"], "tiers": ["prod"]}}
            for body in (tiny, prod_only):
                kubectl(config, "apply", "-f", "-", stdin=json.dumps(body))
            kubectl(
                config, "wait", "--for=condition=Ready", "goldenpath/tiny", "goldenpath/tiny-prod", "--timeout=120s"
            )
            kubectl(config, "create", "namespace", "bench-accounts")
            for account in ("admin", "tenant"):
                kubectl(config, "create", "serviceaccount", account, "-n", "bench-accounts")
            kubectl(config, "create", "clusterrolebinding", "bench-admin", "--clusterrole=cluster-admin",
                    "--serviceaccount=bench-accounts:admin")  # fmt: skip
            tokens = {
                a: kubectl(config, "create", "token", a, "-n", "bench-accounts", "--duration=2h").strip()
                for a in ("admin", "tenant")
            }
            print(f"==> {ENVIRONMENTS} environments of {TEAMS} teams", flush=True)
            asyncio.run(create_all(client, [environment(i) for i in range(ENVIRONMENTS)]))
            kubectl(config, "wait", "--for=condition=Ready", "environments", "--all", "--timeout=300s")
            print(
                f"==> {args.requests} ServiceRequests ({args.ready} provisioned for real, {args.pending} pending)",
                flush=True,
            )
            started = time.monotonic()
            asyncio.run(create_all(client, [request(i, args.ready, args.pending) for i in range(args.requests)]))
            print(f"    created in {time.monotonic() - started:.0f}s; waiting for the operator to reconcile them all")
            wait(
                lambda: settled(client, args.requests, args.ready), 1800, "every request to be reconciled", interval=2.0
            )
            team_env = "bench-00"
            pages = [
                "/catalog",
                "/catalog/tiny",
                f"/catalog/tiny/request?name=new-one&environment={team_env}&p.size=medium",
                f"/api/catalog/tiny/preview?name=new-one&environment={team_env}&p.size=large",
                "/teams",
                "/teams/team-0",
                f"/environments/{team_env}",
                "/requests",
                "/requests?problems=1&page=5",
                "/scorecard",
            ]
            print(f"\n==> {args.requests} requests in the cluster; page loads through the operator's portal")
            idle = []
            for _ in range(10):
                idle.append(lag(ports["metrics"]))
                time.sleep(0.5)
            print(f"  event-loop lag with nobody on the portal (10 scrapes over 5 s): max {max(idle) * 1000:.1f} ms")
            measure(
                base,
                "platform admin (cluster-admin ServiceAccount)",
                tokens["admin"],
                pages,
                args.loads,
                ports["metrics"],
            )
            measure(base, f"tenant (owner of {team_env} only)", tokens["tenant"], pages, args.loads, ports["metrics"])
        finally:
            operator.stop()
            client.close()
            print(f"\n(operator log: {work / 'operator.log'})")


if __name__ == "__main__":
    main()
