"""The `blacktop` command: run the operator, install it, and manage a local control plane.

blacktop run [--local] [--install]      the operator in the foreground (Ctrl-C stops everything)
blacktop install [--catalog]            CRDs, cluster RBAC, operator namespace, example catalog
blacktop cluster up|down|status|kubeconfig
blacktop image build|pause [--out PATH]  the operator image / the node's pause image, as OCI archives
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from blacktop.config import Settings
from blacktop.kube.client import KubeClient
from blacktop.kube.install import EXAMPLES_DIR, install


def _catalog_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("goldenpath-*.yaml"))


def _install(kubeconfig: str | None, settings: Settings, with_catalog: bool) -> None:
    client = KubeClient.from_kubeconfig(kubeconfig)
    try:
        catalog = _catalog_files() if with_catalog else []
        asyncio.run(install(client, operator_namespace=settings.namespace, catalog=catalog))
    finally:
        client.close()


def cmd_run(args: argparse.Namespace) -> int:
    from blacktop.handlers.main import run_operator
    from blacktop.localcluster import LocalCluster

    settings = Settings.from_env()
    with contextlib.ExitStack() as stack:
        if args.local and not args.kubeconfig:
            with_node = _want_node(args)
            parts = "etcd, kube-apiserver, kube-controller-manager" + (
                ", kube-scheduler and a node (containerd, kubelet, kube-proxy)" if with_node else ""
            )
            print(f"==> starting a local cluster ({parts})", flush=True)
            started = time.monotonic()
            cluster = stack.enter_context(LocalCluster(node=with_node))
            os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
            print(f"    ready in {time.monotonic() - started:.1f}s at {cluster.server}", flush=True)
        elif args.kubeconfig:
            os.environ["KUBECONFIG"] = args.kubeconfig
        if args.install:
            print("==> installing CRDs, RBAC and the example catalog", flush=True)
            _install(os.environ.get("KUBECONFIG"), settings, with_catalog=True)
        if "KUBECONFIG" in os.environ:
            print("\nIn another terminal, use the cluster with:\n", flush=True)
            print(f"    export KUBECONFIG={os.environ['KUBECONFIG']}\n", flush=True)
        print("==> running the operator (Ctrl-C to stop)", flush=True)
        run_operator(settings, verbose=args.verbose)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blacktop", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator in the foreground")
    run.add_argument("--kubeconfig", help="use this cluster (default: $KUBECONFIG or in-cluster)")
    run.add_argument("--local", action="store_true", help="start a local control plane unless --kubeconfig")
    run.add_argument("--install", action="store_true", help="install CRDs, RBAC and the example catalog first")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.add_argument("--no-node", action="store_true", help="with --local: the control plane only (no kubelet)")
    run.set_defaults(func=cmd_run)

    inst = sub.add_parser("install", help="install CRDs, cluster RBAC and the operator namespace")
    inst.add_argument("--kubeconfig")
    inst.add_argument("--catalog", action="store_true", help="also apply examples/goldenpath-*.yaml")
    inst.set_defaults(func=cmd_install)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":  # Kopf configures logging for the operator itself
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.func(args)
    return code
