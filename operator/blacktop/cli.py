"""The `blacktop` command: run the operator, install it, and manage a local control plane.

blacktop run [--local] [--install]      the operator in the foreground (Ctrl-C stops everything);
                                        --local adds a local cluster and a PostgreSQL when missing
blacktop install [--catalog]            CRDs, cluster RBAC, operator namespace, example catalog
blacktop approve -n NS NAME [--digest D] approve the plan a ServiceRequest waits with
blacktop cluster up|down|status|kubeconfig
blacktop image build|pause [--out PATH]  the operator image / the node's pause image, as OCI archives
blacktop feedback SCORE [-g GOLDEN_PATH] [-m COMMENT] [-n ENVIRONMENT]   rate a golden path or the platform
blacktop runner                          what a runner pod runs (pod mode; started by the operator)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from blacktop.api.servicerequest import ApprovalState, ServiceRequestStatus
from blacktop.builders import naming
from blacktop.config import Settings
from blacktop.kube.client import ClusterConfigError, KubeClient, resolve_kubeconfig
from blacktop.kube.errors import ConflictError, KubeApiError
from blacktop.kube.install import EXAMPLES_DIR, install, load_manifests
from blacktop.kube.resources import SERVICEREQUESTS, resource_for
from blacktop.localcluster.cluster import ClusterStartError, LocalCluster
from blacktop.localcluster.node import NodeError
from blacktop.localcluster.postgres import PostgresServer, PostgresStartError
from blacktop.toolbox import ToolMissingError, bin_dir


def _catalog_files() -> list[Path]:
    from blacktop.kube.install import EXAMPLES_DIR

    return sorted(EXAMPLES_DIR.glob("goldenpath-*.yaml"))


def _install(kubeconfig: str | None, settings: Settings, with_catalog: bool) -> dict[str, bool]:
    client = KubeClient.from_kubeconfig(kubeconfig)
    try:
        catalog = _catalog_files() if with_catalog else []
        return asyncio.run(install(client, operator_namespace=settings.namespace, catalog=catalog))
    finally:
        client.close()


def portal_url(settings: Settings) -> str:
    """Where a browser on this machine opens the portal."""
    host = settings.portal_address
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 (the wildcard is reached on loopback)
    return f"http://{host}:{settings.portal_port}/"


# -- blacktop run ------------------------------------------------------------------------------------

T = TypeVar("T")
POSTGRES_ADMIN_SECRET = EXAMPLES_DIR / "postgres-admin-secret.yaml"
MANAGED_BY = {"app.kubernetes.io/managed-by": "blacktop-run"}
SECRET = resource_for("v1", "Secret")


def _step(title: str, action: Callable[[], T], done: Callable[[T], str] = lambda _: "") -> T:
    """Print what starts, run it, print how long it took (and what ``done`` says about the result)."""
    print(f"==> {title}", flush=True)
    started = time.monotonic()
    result = action()
    detail = done(result)
    print(f"    done in {time.monotonic() - started:.1f}s" + (f": {detail}" if detail else ""), flush=True)
    return result


def _catalog_summary(created: dict[str, bool]) -> str:
    new = [key for key, made in created.items() if made]
    kept = [key for key, made in created.items() if not made]
    parts = [f"created {', '.join(new)}"] if new else []
    if kept:
        parts.append(f"kept your {', '.join(kept)} (the example catalog is create-only, never overwritten)")
    return "; ".join(parts)


class _EmbeddedDatabase:
    """The embedded PostgreSQL of `blacktop run --local` and its admin Secret, unless the cluster
    already has that Secret (then the platform team's own server is used and nothing is started)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.example = load_manifests([POSTGRES_ADMIN_SECRET])[0]
        meta = self.example["metadata"]
        self.secret = f"{meta['namespace']}/{meta['name']}"
        self.server: PostgresServer | None = None
        client = KubeClient.from_kubeconfig()
        stack.callback(client.close)
        if asyncio.run(client.get(SECRET, meta["name"], meta["namespace"])) is not None:
            print(f"==> PostgreSQL: yours (Secret {self.secret} exists), no embedded server started", flush=True)
            return
        self.server = _step(
            f"starting an embedded PostgreSQL (no Secret {self.secret} yet)",
            lambda: stack.enter_context(PostgresServer()),
            lambda pg: f"{pg.host}:{pg.port}, data in {pg.base}",
        )
        secret = json.loads(json.dumps(self.example))
        secret["metadata"]["labels"] = dict(MANAGED_BY)
        secret["stringData"] = {key: self.server.env[key] for key in self.example["stringData"]}
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": meta["namespace"]}}
        asyncio.run(client.apply(namespace))
        uid = asyncio.run(client.create(secret))["metadata"]["uid"]
        print(f"    Secret {self.secret} points at it (removed again when this stops)", flush=True)

        def remove_secret() -> None:
            # Only the very Secret we made: one the user created since is theirs (uid precondition).
            with contextlib.suppress(ConflictError):
                asyncio.run(client.delete(SECRET, meta["name"], meta["namespace"], uid=uid))

        stack.callback(remove_secret)

    def where(self) -> str:
        """One line saying where the database server is (never its password)."""
        if self.server is None:
            return f"PostgreSQL: your server, from Secret {self.secret}"
        return (
            f"PostgreSQL: embedded at {self.server.host}:{self.server.port} (data in {self.server.base}); "
            f"admin credentials in Secret {self.secret}"
        )


def _second_terminal(kubeconfig: str | None) -> list[str]:
    """The shell lines a second terminal needs: the repository (the README's paths are relative to
    it), the pinned kubectl and psql first on PATH, and the cluster."""
    lines = [f"cd {shlex.quote(str(EXAMPLES_DIR.parent))}"] if EXAMPLES_DIR.is_dir() else []
    lines.append(f'export PATH={shlex.quote(str(bin_dir()))}:"$PATH"')
    if kubeconfig:
        lines.append(f"export KUBECONFIG={shlex.quote(kubeconfig)}")
    return lines


def _announce_when_ready(ready: threading.Event, started: float, lines: list[str], notes: list[str]) -> None:
    def wait() -> None:
        ready.wait()
        text = [f"    the operator is running (started in {time.monotonic() - started:.1f}s)", ""]
        text += ["In a second terminal:", "", *(f"    {line}" for line in lines), ""]
        text += [*notes, ""] if notes else []
        text += ["Ctrl-C here stops everything.", ""]
        print("\n".join(text), flush=True)

    threading.Thread(target=wait, name="announce", daemon=True).start()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _still_stopping(signum: int, frame: object) -> None:
    print("    still stopping (the embedded servers and the local cluster are being removed)", flush=True)


def _cluster(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """Point $KUBECONFIG at the cluster to use: the one given (``--kubeconfig``, ``$KUBECONFIG``), else,
    with ``--local``, a local cluster (with a node as root, unless ``--no-node``) that lives as long
    as this command."""
    given = args.kubeconfig or os.environ.get("KUBECONFIG")
    if given:
        resolve_kubeconfig(args.kubeconfig)  # a kubeconfig that is not there: say so before anything starts
        os.environ["KUBECONFIG"] = given  # the operator, OpenTofu and the second terminal all use it
        if args.local:
            print(f"==> using your cluster (KUBECONFIG={given}); no local cluster", flush=True)
        return
    if not args.local:
        return
    with_node = _want_node(args)
    parts = "etcd, kube-apiserver, kube-controller-manager" + (
        ", kube-scheduler and a node (containerd, kubelet, kube-proxy)" if with_node else ""
    )
    cluster = _step(
        f"starting a local cluster ({parts})",
        lambda: stack.enter_context(LocalCluster(node=with_node)),
        lambda c: f"{c.server}",
    )
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)


# What `blacktop run --local` (so `make run`) sets unless the environment already does: the developer
# portal on loopback (the default address), without sign-in (this machine's user is the cluster's
# admin anyway; Settings refuses no sign-in on any other address).
LOCAL_DEFAULTS = {"BLACKTOP_PORTAL_PORT": "8090", "BLACKTOP_PORTAL_AUTH": "none"}


def local_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings ``--local`` adds to ``environ`` (those it does not set itself)."""
    return {key: value for key, value in LOCAL_DEFAULTS.items() if key not in environ}


def _run(args: argparse.Namespace, stack: contextlib.ExitStack, ready: threading.Event) -> None:
    from blacktop.handlers.main import run_operator

    if args.local:
        os.environ.update(local_defaults(os.environ))
    # OpenTofu's working copies and the module cache live as long as this run, not in /tmp forever.
    for variable, prefix in (
        ("BLACKTOP_WORKSPACE_ROOT", "blacktop-workspaces-"),
        ("BLACKTOP_MODULE_CACHE_ROOT", "blacktop-modules-"),
    ):
        if args.local and variable not in os.environ:
            folder = tempfile.mkdtemp(prefix=prefix)
            stack.callback(shutil.rmtree, folder, True)
            os.environ[variable] = folder
    settings = Settings.from_env()
    _cluster(args, stack)
    if args.install:
        _step(
            "installing CRDs, RBAC and the example catalog",
            lambda: _install(None, settings, with_catalog=True),
            _catalog_summary,
        )
    database = _EmbeddedDatabase(stack) if args.local else None
    portal = f"The developer portal (read-only): {portal_url(settings)}" if settings.portal_port else None
    print("==> starting the operator", flush=True)
    if database is not None:
        lines = _second_terminal(os.environ.get("KUBECONFIG"))
        _announce_when_ready(ready, time.monotonic(), lines, [database.where(), *([portal] if portal else [])])
    elif portal:
        print(portal, flush=True)
    run_operator(settings, verbose=args.verbose, ready=ready)


def cmd_run(args: argparse.Namespace) -> int:
    from blacktop.handlers.main import OperatorStartError

    ready = threading.Event()  # set by Kopf once the operator's start-up handlers succeeded
    # Until Kopf installs its own handlers, SIGTERM stops us like Ctrl-C: everything started is removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            try:
                _run(args, stack, ready)
            finally:
                # Stopping takes a few seconds; a second Ctrl-C must not leave half of it behind.
                signal.signal(signal.SIGINT, _still_stopping)
                signal.signal(signal.SIGTERM, _still_stopping)
                if args.local and ready.is_set():
                    print("==> stopping", flush=True)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except NodeError as exc:
        # Everything started was removed; the node is the part that needs the most of this machine.
        print(f"blacktop run: the local node did not start: {exc}", file=sys.stderr)
        print("blacktop run: to run without a node (Pods stay Pending): add --no-node", file=sys.stderr)
        return 1
    except (ClusterConfigError, ClusterStartError, PostgresStartError, ToolMissingError, OperatorStartError) as exc:
        print(f"blacktop run: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.local:
        print("    stopped; nothing left running", flush=True)
    return 0


def _want_node(args: argparse.Namespace) -> bool:
    """A node unless --no-node; it needs root, so without root say so and go on without one."""
    if args.no_node:
        return False
    if os.geteuid() != 0:
        print("    (no node: it needs root; Pods will stay Pending. --no-node silences this)", flush=True)
        return False
    return True


def cmd_install(args: argparse.Namespace) -> int:
    _install(args.kubeconfig, Settings.from_env(), with_catalog=args.catalog)
    print("installed")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    """Show the plan a request waits with, and approve it: the same annotation as `kubectl annotate`,
    so admission checks the same things (who may approve, which plan, no self-approval)."""
    client = KubeClient.from_kubeconfig(args.kubeconfig)
    try:
        return asyncio.run(_approve(client, args.namespace, args.name, args.digest))
    finally:
        client.close()


async def _approve(client: KubeClient, namespace: str, name: str, digest: str | None) -> int:
    body = await client.get(SERVICEREQUESTS, name, namespace)
    if body is None:
        print(f"ServiceRequest {namespace}/{name} does not exist", file=sys.stderr)
        return 1
    approval = ServiceRequestStatus.model_validate(body.get("status") or {}).approval
    if approval is None or approval.state is not ApprovalState.PENDING:
        print(f"ServiceRequest {namespace}/{name} has no plan awaiting approval; nothing to do", file=sys.stderr)
        return 1
    rules = "; ".join(f"{r.policy}/{r.rule}: {r.message}" for r in approval.rules)
    print(f"ServiceRequest {namespace}/{name}: {approval.operation} plan {approval.plan_digest}")
    print(f"  plan:     {approval.plan}")
    print(f"  cost:     {approval.monthly_cost or 'unknown'} a month")
    print(f"  asked by: {rules}")
    print(f"  changed by {approval.requested_by or 'unknown'}, waiting since {approval.requested_at}")
    if digest is not None and digest != approval.plan_digest:
        print(f"plan {digest} is not the plan awaiting approval; approving it would do nothing", file=sys.stderr)
        return 1
    patch = {"metadata": {"annotations": {naming.APPROVE: approval.plan_digest}}}
    try:
        await client.merge_patch(SERVICEREQUESTS, name, patch, namespace)
    except KubeApiError as exc:
        print(exc.message, file=sys.stderr)  # admission's line: who may approve, or why not
        return 1
    print(f"approved plan {approval.plan_digest}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from blacktop import localcluster

    state_dir = Path(args.state_dir) if args.state_dir else localcluster.default_state_dir()
    if args.action == "up":
        info = localcluster.up(state_dir, node=_want_node(args))
        print(f"local control plane up at {info.server}")
        print(f"export KUBECONFIG={info.kubeconfig}")
    elif args.action == "down":
        localcluster.down(state_dir)
        print("local control plane stopped")
    elif args.action == "kubeconfig":
        status = localcluster.status(state_dir)
        if status is None:
            print("no local control plane is running; start one with `blacktop cluster up`", file=sys.stderr)
            return 1
        print(status.kubeconfig)
    else:
        status = localcluster.status(state_dir)
        print("down" if status is None else f"up at {status.server}")
        return 0 if status is not None else 1
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from blacktop.localcluster import images

    def say(line: str) -> None:
        print(line, flush=True)

    out = Path(args.out) if args.out else None
    try:
        if args.action == "build":
            archive = images.build_operator_image(out=out, refresh_base=args.refresh_base, progress=say)
        else:
            archive = images.pause_image(out=out, progress=say)
    except images.ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{archive.name} {archive.manifest_digest}\n    import with: ctr -n k8s.io images import {archive.path}")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from blacktop.controllers.feedback import FeedbackError, give_feedback

    client = KubeClient.from_kubeconfig(args.kubeconfig)
    try:
        given = asyncio.run(
            give_feedback(
                client,
                score=args.score,
                golden_path=args.golden_path,
                comment=args.comment,
                namespace=args.namespace,
                kubeconfig=args.kubeconfig,
            )
        )
    except FeedbackError as exc:
        print(f"blacktop feedback: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(given.thanks())
    return 0


def cmd_runner(args: argparse.Namespace) -> int:
    from blacktop.runners import agent

    return agent.main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blacktop", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator in the foreground")
    run.add_argument("--kubeconfig", help="use this cluster (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    run.add_argument(
        "--local",
        action="store_true",
        help="for development: a local cluster (with a node as root, unless --no-node) unless a kubeconfig is "
        "given (--kubeconfig, $KUBECONFIG), an embedded PostgreSQL unless the Secret "
        "blacktop-system/postgres-admin exists, all removed at exit",
    )
    run.add_argument("--install", action="store_true", help="install CRDs, RBAC and the example catalog first")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.add_argument("--no-node", action="store_true", help="with --local: the control plane only (no kubelet)")
    run.set_defaults(func=cmd_run)

    inst = sub.add_parser("install", help="install CRDs, cluster RBAC and the operator namespace")
    inst.add_argument("--kubeconfig")
    inst.add_argument("--catalog", action="store_true", help="also apply examples/goldenpath-*.yaml")
    inst.set_defaults(func=cmd_install)

    approve = sub.add_parser("approve", help="approve the plan a ServiceRequest is waiting with")
    approve.add_argument("name", help="the ServiceRequest")
    approve.add_argument("-n", "--namespace", required=True, help="its namespace (the environment)")
    approve.add_argument("--digest", help="the plan digest you reviewed (refused if another plan waits now)")
    approve.add_argument("--kubeconfig")
    approve.set_defaults(func=cmd_approve)

    cluster = sub.add_parser("cluster", help="a detached local control plane for development")
    cluster.add_argument("action", choices=["up", "down", "status", "kubeconfig"])
    cluster.add_argument("--state-dir", help="where its data and state live (default: the tool cache)")
    cluster.add_argument("--no-node", action="store_true", help="up: the control plane only, no node (no root needed)")
    cluster.set_defaults(func=cmd_cluster)

    image = sub.add_parser("image", help="build the operator image or the node's pause image (no Docker needed)")
    image.add_argument("action", choices=["build", "pause"], help="build: the operator image; pause: the pause image")
    image.add_argument("--out", help="where to write the OCI archive (default: the tool cache's images/)")
    image.add_argument(
        "--refresh-base", action="store_true", help="rebuild the Debian base to pick up Debian's updates"
    )
    image.set_defaults(func=cmd_image)
    feedback = sub.add_parser(
        "feedback",
        help="rate a golden path or the platform, 0-10 (counts in the scorecard's NPS)",
        description="Rate a golden path (or the platform as a whole) from 0 (would not recommend it) to 10 "
        "(would recommend it to any colleague). Your latest rating this quarter counts; your team and the "
        "platform team can read it, other teams cannot.",
    )
    feedback.add_argument("score", type=int, choices=range(11), metavar="SCORE", help="0 to 10")
    feedback.add_argument("-g", "--golden-path", help="the golden path rated (default: the platform as a whole)")
    feedback.add_argument("-m", "--comment", help="what works and what does not")
    feedback.add_argument(
        "-n", "--namespace", help="your environment's namespace (default: the kubeconfig context's namespace)"
    )
    feedback.add_argument("--kubeconfig")
    feedback.set_defaults(func=cmd_feedback)

    runner = sub.add_parser("runner", help="serve one run in a runner pod (pod mode: the operator starts these)")
    runner.set_defaults(func=cmd_runner)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in {"run", "runner"}:  # Kopf configures the operator's logging, the runner its own
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.func(args)
    return code
