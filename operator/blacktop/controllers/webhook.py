"""The ValidatingWebhookConfiguration `blacktop` in local mode: applied when the webhook server
listens, removed when the operator stops.

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

CONFIGS = resource_for("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration")


async def apply_configuration(client: Client, *, operator_namespace: str, url: str, ca_bundle: str) -> None:
    """Point the apiserver at this operator's webhook server (base ``url``)."""
    config = builder.build_configuration(operator_namespace=operator_namespace, url=url, ca_bundle=ca_bundle)
    await client.apply(config)
    logger.info("admission webhook configuration %s points at %s", builder.NAME, url)


async def remove_configuration(client: Client, *, url: str) -> bool:
    """Delete the configuration if it still points at ``url``; True if it did."""
    current = await client.get(CONFIGS, builder.NAME)
    if current is None:
        return False
    urls = [str((w.get("clientConfig") or {}).get("url") or "") for w in current.get("webhooks") or []]
    if not urls or not all(u.startswith(url.rstrip("/") + "/") for u in urls):
        logger.info("admission webhook configuration %s belongs to another server; leaving it", builder.NAME)
        return False
    await client.delete(CONFIGS, builder.NAME)
    logger.info("admission webhook configuration %s removed", builder.NAME)
    return True
