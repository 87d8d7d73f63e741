"""Leader election between operator replicas with a coordination Lease (``settings.leader_lease_name``).

Kopf has no leader election, so Blacktop does what client-go's leaderelection does. Every replica
tries to take the Lease; the one holding it reconciles, the others wait (and answer admission
reviews, which need no leader). The holder renews it every ``leader_retry_seconds``. A standby
takes it over once it has seen no renewal for ``leader_lease_seconds``, measured on its *own*
clock from the moment it last saw the Lease change (never by comparing timestamps of two machines).
A leader that cannot renew for ``leader_renew_deadline_seconds`` (shorter than the lease) gives up:
its caller stops every tool in flight within ``settings.leader_stop_grace_seconds`` and exits, so a
partitioned former leader runs nothing by the time its lease can pass to a standby. A leader that
stops cleanly releases the Lease, so the standby takes over at its next look.

:func:`decide` is the pure rule; :class:`Elector` acts through the API client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from blacktop.config import Settings
from blacktop.kube.client import Client
from blacktop.kube.errors import ConflictError, KubeApiError
from blacktop.kube.resources import resource_for

logger = logging.getLogger(__name__)

LEASE = resource_for("coordination.k8s.io/v1", "Lease")
PODS = resource_for("v1", "Pod")
# On the leader's own Pod (settings.pod_name): Services of what only the leader serves select it.
LABEL_LEADER = "blacktop.dev/leader"
JSON = dict[str, Any]


def identity() -> str:
    """This replica's name in the Lease: the pod (host) name, the process, and a random part."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(3)}"


def _micro_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Verdict(Enum):
    OURS = "ours"  # we hold it: renew
    FREE = "free"  # nobody holds it (released, or never taken): take it
    EXPIRED = "expired"  # its holder has not renewed for a whole lease: take it over
    HELD = "held"  # another replica holds it and renews: wait


@dataclass(frozen=True)
class Observed:
    """What a replica last saw of the Lease and when, by its own monotonic clock."""

    holder: str | None
    version: str | None  # resourceVersion: every renewal changes it
    at: float


def decide(lease: JSON | None, *, me: str, seen: Observed | None, now: float, lease_seconds: float) -> Verdict:
    """What to do with the Lease as it is now (``seen``: what we saw before). Pure."""
    if lease is None:
        return Verdict.FREE
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or None
    if holder is None:
        return Verdict.FREE
    if holder == me:
        return Verdict.OURS
    duration = float(spec.get("leaseDurationSeconds") or lease_seconds)
    version = (lease.get("metadata") or {}).get("resourceVersion")
    unchanged = seen is not None and seen.holder == holder and seen.version == version
    if unchanged and seen is not None and now - seen.at >= duration:
        return Verdict.EXPIRED
    return Verdict.HELD


class Elector:
    """Takes, keeps and releases the leader Lease for this replica (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        *,
        me: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.settings = settings
        self.me = me or identity()
        self.leading = False
        # Whether the lease stayed ours since we last led (nobody else took it meanwhile).
        self.kept = False
        self._monotonic = monotonic
        self._wall = wall
        self._sleep = sleep
        self._seen: Observed | None = None
        self._call_timeout = settings.leader_renew_deadline_seconds / 2

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True), or until ``stop`` is set (False)."""
        announced = False
        while not stop.is_set():
            if await self.try_lead():
                logger.info("leading: holding Lease %s as %s", self.settings.leader_lease_name, self.me)
                return True
            if not announced and self._seen is not None:
                logger.info("standing by: Lease %s is held by %s", self.settings.leader_lease_name, self._seen.holder)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.leader_retry_seconds)
        return False

    async def keep(self) -> None:
        """Renew the Lease until that fails for the renew deadline (or another replica took it);
        returns when this replica is no longer leader."""
        last_renewed = self._monotonic()
        while True:
            await self._sleep(self.settings.leader_retry_seconds)
            if await self.try_lead():
                last_renewed = self._monotonic()
                continue
            if not self.leading:
                logger.error(
                    "leadership lost: Lease %s was taken by %s", self.settings.leader_lease_name, self._holder()
                )
                return
            if self._monotonic() - last_renewed >= self.settings.leader_renew_deadline_seconds:
                self.leading = False
                logger.error(
                    "leadership lost: could not renew Lease %s for %.0fs (renew deadline)",
                    self.settings.leader_lease_name,
                    self.settings.leader_renew_deadline_seconds,
                )
                return

    async def release(self) -> None:
        """Give the Lease up (a clean stop), so a standby takes over at its next look."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self._call(self.client.get(LEASE, self.settings.leader_lease_name, self.settings.namespace))
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.me:
                lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
                await self._call(self.client.replace(lease))
                logger.info("released Lease %s", self.settings.leader_lease_name)
        except (KubeApiError, TimeoutError) as exc:
            logger.warning(
                "could not release Lease %s (%s); a standby takes over when it expires",
                self.settings.leader_lease_name,
                exc,
            )

    async def try_lead(self) -> bool:
        """One look at the Lease: take, renew or leave it. Whether this replica leads now (an API
        error counts as not renewed: the caller's deadline decides)."""
        try:
            lease = await self._call(self.client.get(LEASE, self.settings.leader_lease_name, self.settings.namespace))
            now = self._monotonic()
            verdict = decide(
                lease, me=self.me, seen=self._seen, now=now, lease_seconds=self.settings.leader_lease_seconds
            )
            self._observe(lease, now)
            if verdict == Verdict.HELD:
                self.leading = False
                self.kept = False
                return False
            if not self.leading:
                self.kept = verdict == Verdict.OURS  # leading again on a lease nobody took meanwhile
            await self._take(lease, renew=verdict == Verdict.OURS)
        except ConflictError:
            self.leading = False  # someone else wrote it first: look again next time
            return False
        except (KubeApiError, TimeoutError) as exc:
            logger.warning("could not read or write Lease %s: %s", self.settings.leader_lease_name, exc)
            return False
        self.leading = True
        return True

    async def _take(self, lease: JSON | None, *, renew: bool) -> None:
        now = _micro_time(self._wall())
        duration = math.ceil(self.settings.leader_lease_seconds)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.settings.leader_lease_name, "namespace": self.settings.namespace},
                "spec": {
                    "holderIdentity": self.me,
                    "leaseDurationSeconds": duration,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            written = await self._call(self.client.create(body))
        else:
            spec = dict(lease.get("spec") or {})
            if not renew:
                spec["acquireTime"] = now
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec.update({"holderIdentity": self.me, "leaseDurationSeconds": duration, "renewTime": now})
            written = await self._call(self.client.replace({**lease, "spec": spec}))
        self._observe(written, self._monotonic())

    def _observe(self, lease: JSON | None, now: float) -> None:
        spec = (lease or {}).get("spec") or {}
        holder, version = (
            spec.get("holderIdentity") or None,
            ((lease or {}).get("metadata") or {}).get("resourceVersion"),
        )
        if self._seen is None or (self._seen.holder, self._seen.version) != (holder, version):
            self._seen = Observed(holder, version, now)

    def _holder(self) -> str | None:
        return self._seen.holder if self._seen else None

    async def _call(self, call: Any) -> Any:
        # A renewal must not wait for a stalled API server past the renew deadline.
        return await asyncio.wait_for(call, timeout=self._call_timeout)


async def label_own_pod(client: Client, settings: Settings, *, leading: bool) -> None:
    """Put the leader label on this replica's Pod, or take it off (no Pod name: not in a cluster,
    nothing to do). Best effort: a failure is logged; a Pod that is gone takes its label along."""
    if not settings.pod_name:
        return
    patch = {"metadata": {"labels": {LABEL_LEADER: "true" if leading else None}}}
    try:
        await asyncio.wait_for(
            client.merge_patch(PODS, settings.pod_name, patch, settings.namespace),
            timeout=settings.leader_renew_deadline_seconds / 2,
        )
    except (KubeApiError, TimeoutError) as exc:
        logger.warning(
            "could not %s the leader label of Pod %s: %s", "set" if leading else "remove", settings.pod_name, exc
        )
