"""The webhook configurations `blacktop` (validating and mutating) in local mode: applied when the
webhook server listens, removed when the operator stops.

Removal matters: with failurePolicy Fail, a configuration pointing at a stopped operator would
refuse every later create or update of Blacktop's kinds (the cluster would be wedged until the
operator came back). Only a configuration that still points at this process's own URL is removed,
so a second operator that took the configuration over keeps it. A SIGKILLed operator cannot clean
up; the next start replaces the configuration. With the Helm chart (webhook_manage_config false)
none of this runs: the chart owns the configuration.
"""

from __future__ import annotations

import logging

from blacktop.builders import webhook as builder
from blacktop.kube.client import Client
from blacktop.kube.resources import resource_for

logger = logging.getLogger(__name__)

CONFIGS = resource_for("admissionregistration.k8s.io/v1", builder.VALIDATING)
MUTATING_CONFIGS = resource_for("admissionregistration.k8s.io/v1", builder.MUTATING)


async def apply_configuration(client: Client, *, operator_namespace: str, url: str, ca_bundle: str) -> None:
    """Point the apiserver at this operator's webhook server (base ``url``): mutating, then validating."""
    for kind in (builder.MUTATING, builder.VALIDATING):
        config = builder.build_configuration(
            operator_namespace=operator_namespace, url=url, ca_bundle=ca_bundle, kind=kind
        )
        await client.apply(config)
    logger.info("admission webhook configuration %s points at %s", builder.NAME, url)


async def remove_configuration(client: Client, *, url: str) -> bool:
    """Delete the configurations that still point at ``url``; True if the validating one was."""
    removed = False
    for resource in (CONFIGS, MUTATING_CONFIGS):
        current = await client.get(resource, builder.NAME)
        if current is None:
            continue
        urls = [str((w.get("clientConfig") or {}).get("url") or "") for w in current.get("webhooks") or []]
        if not urls or not all(u.startswith(url.rstrip("/") + "/") for u in urls):
            logger.info("admission %s %s belongs to another server; leaving it", resource.kind, builder.NAME)
            continue
        await client.delete(resource, builder.NAME)
        removed = removed or resource is CONFIGS
    if removed:
        logger.info("admission webhook configuration %s removed", builder.NAME)
    return removed
