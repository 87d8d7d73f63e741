"""The operator's Settings are read once, by the CLI, and that very object reaches every part:
the handlers' registration (timer intervals), the Context every replica builds at start, and Kopf's
memo on the leader; the replica takes the leader Lease before Kopf runs and releases it after."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import urllib.error
import urllib.request
from typing import Any

import kopf
import pytest

from blacktop.config import Settings
from blacktop.controllers.leadership import LEASE
from blacktop.controllers.webhook import CONFIGS
from blacktop.handlers import main, wiring
from blacktop.handlers.main import operate, run_operator
from blacktop.kube.client import KubeClient
from fakes import Clock, FakeClient
from helpers import free_port

pytestmark = pytest.mark.unit


class NoCache:
    """Stands in for the informer cache (the fake client has no watches): reads go to the client."""

    def __init__(self, *_: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_the_settings_the_cli_built_are_the_only_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        drift_check_seconds=7,
        resync_seconds=11,
        metrics_port=0,
        health_port=0,
        webhook_port=0,
        webhook_manage_config=False,
    )
    ran: dict[str, Any] = {}
    client = FakeClient(Clock())
    client.kubeconfig = "/tmp/resolved.kubeconfig"  # a name only: nothing reads it

    async def operator(**kwargs: Any) -> None:
        ran.update(kwargs)
        lease = client.stored(LEASE, settings.leader_lease_name, settings.namespace)
        ran["leader"] = (lease or {}).get("spec", {}).get("holderIdentity")

    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr(kopf, "operator", operator)
    monkeypatch.setattr(KubeClient, "from_kubeconfig", classmethod(lambda cls, path=None, timeout=0: client))
    monkeypatch.setattr(main, "ClusterCache", NoCache)

    def read_again(*_: Any, **__: Any) -> Settings:
        raise AssertionError("Settings were read from the environment a second time")

    monkeypatch.setattr(Settings, "from_env", read_again)
    run_operator(settings)

    memo = ran["memo"]
    assert memo.settings is settings
    assert memo.ctx.settings is settings
    assert wiring.settings() is settings
    assert ran["leader"]  # Kopf ran only once this replica held the Lease ...
    lease = client.stored(LEASE, settings.leader_lease_name, settings.namespace)
    assert lease is not None
    assert not lease["spec"].get("holderIdentity")  # ... which it released when it stopped
    # Timers were registered with this object's intervals.
    timers = {h.id: h for h in kopf.get_default_registry()._spawning.get_all_handlers()}
    assert timers["environment_resync"].interval == 11
    assert "service_request_drift" not in timers  # drift checks have one schedule, not a timer per request
    # OpenTofu's state backend reaches the cluster the client was resolved to, not $KUBECONFIG.
    assert memo.ctx.runners.kubeconfig == client.kubeconfig

    # Registering again with other settings would leave the timers on the old ones: refused.
    with pytest.raises(RuntimeError, match="already registered"):
        wiring.use(Settings(drift_check_seconds=1))


def test_on_sigterm_the_webhook_answers_kopfs_last_patches_and_goes_only_after_its_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order of a stop: Kopf stops first (its last patches still pass admission), then the
    Lease is released, then the configuration removed, and only then does the server stop."""
    port = free_port()
    settings = Settings(metrics_port=0, health_port=0, webhook_port=port, webhook_manage_config=True)
    client = FakeClient(Clock())
    answered: list[bool] = []

    async def operator(stop_flag: asyncio.Event, **_: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # kubelet stops the pod
        await stop_flag.wait()
        # Kopf's last patch of an object, through the admission webhook, while Kopf stops.
        answered.append(await asyncio.to_thread(_review_answered, port))
        client.calls.append(("kopf-stopped", "", ""))

    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr(kopf, "operator", operator)
    monkeypatch.setattr(KubeClient, "from_kubeconfig", classmethod(lambda cls, path=None, timeout=0: client))
    monkeypatch.setattr(main, "ClusterCache", NoCache)
    assert asyncio.run(operate(settings)) == 0

    assert answered == [True]
    order = [verb if kind != "Lease" else f"{verb} Lease" for verb, kind, _ in client.calls]
    stopped = order.index("kopf-stopped")
    released = max(i for i, verb in enumerate(order) if verb == "replace Lease")
    removed = order.index("delete")  # the ValidatingWebhookConfiguration
    assert stopped < released < removed
    assert client.stored(CONFIGS, "blacktop") is None
    with pytest.raises(urllib.error.URLError, match="refused"):  # and the server is gone after it
        _review_answered(port)


def _review_answered(port: int) -> bool:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "1"}}
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/validate-goldenpath",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
    )
    context = ssl._create_unverified_context()  # only whether it answers
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return bool(json.loads(response.read())["response"]["allowed"])
