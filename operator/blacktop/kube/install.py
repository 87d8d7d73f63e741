"""Installing Blacktop into a cluster: CRDs, cluster-wide RBAC, the operator namespace, a catalog.

Used by `blacktop install`, `make run` and the test suite, so all three install exactly the same
objects the same way (server-side apply, then wait until the CRDs are Established). The example
catalog is create-only: a GoldenPath the platform team already has, edited or not, is theirs and
is never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from blacktop.builders.rbac import cluster_rbac
from blacktop.kube.client import KubeClient
from blacktop.kube.errors import ConflictError, KubeApiError
from blacktop.kube.resources import resource_for

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
CRDS_DIR = REPO_ROOT / "crds"
EXAMPLES_DIR = REPO_ROOT / "examples"


def load_manifests(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """All objects in the given YAML files (multi-document aware, empty documents skipped)."""
    objects: list[dict[str, Any]] = []
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            objects.extend(doc for doc in yaml.safe_load_all(fh) if doc)
    return objects


async def wait_established(client: KubeClient, names: Iterable[str], deadline_seconds: float = 60.0) -> None:
    """Wait until each CRD is Established and its objects can be listed, or raise with the CRD's story."""
    crds = resource_for("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    deadline = time.monotonic() + deadline_seconds
    for name in names:
        while True:
            crd = await client.get(crds, name)
            # Right after creation the apiserver may report `conditions: null`.
            conditions = {c["type"]: c for c in ((crd or {}).get("status") or {}).get("conditions") or []}
            if conditions.get("Established", {}).get("status") == "True" and await _lists(client, crd or {}):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {deadline_seconds:.0f}s: {conditions}")
            await asyncio.sleep(0.2)


async def _lists(client: KubeClient, crd: dict[str, Any]) -> bool:
    # Established comes a moment before the watch cache of a new kind is filled; until then lists
    # answer 429 "storage is (re)initializing", which the operator's first watches would log as ERRORs.
    spec = crd["spec"]
    served = next(v["name"] for v in spec["versions"] if v.get("served"))
    try:
        await client.request("GET", f"/apis/{spec['group']}/{served}/{spec['names']['plural']}", query={"limit": "1"})
    except KubeApiError as exc:
        if exc.status == 429:
            return False
        raise
    return True


async def create_if_absent(client: KubeClient, obj: dict[str, Any]) -> bool:
    """Create ``obj`` unless an object of that kind and name exists; True if this call created it."""
    resource = resource_for(obj["apiVersion"], obj["kind"])
    meta = obj["metadata"]
    if await client.get(resource, meta["name"], meta.get("namespace")) is not None:
        return False
    try:
        await client.create(obj)
    except ConflictError:  # created in between by someone else: theirs, as above
        return False
    return True


async def install(
    client: KubeClient,
    *,
    operator_namespace: str = "blacktop-system",
    crds_dir: Path = CRDS_DIR,
    catalog: Iterable[Path] = (),
) -> dict[str, bool]:
    """Apply the CRDs, cluster RBAC and operator namespace, then create the catalog's objects that
    do not exist yet. Returns ``"<Kind>/<name>"`` of each catalog object -> whether it was created."""
    # A handful of small files, read once at install time: not worth a thread.
    crds = load_manifests(sorted(crds_dir.glob("*.yaml")))  # noqa: ASYNC240
    for crd in crds:
        await client.apply(crd)
    await wait_established(client, [crd["metadata"]["name"] for crd in crds])
    logger.info("installed %d CRDs", len(crds))
    for obj in cluster_rbac():
        await client.apply(obj)
    await client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": operator_namespace}})
    created: dict[str, bool] = {}
    for obj in load_manifests(catalog):
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        created[key] = await create_if_absent(client, obj)
        if created[key]:
            logger.info("created %s", key)
        else:
            logger.info("kept the existing %s (the example catalog is create-only)", key)
    return created
