"""The operator's Settings are read once, by the CLI, and that very object reaches every part:
the handlers' registration (timer intervals), Kopf's memo, and the Context start-up builds."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from blacktop.config import Settings
from blacktop.handlers import wiring
from blacktop.handlers.main import run_operator
from blacktop.kube.client import KubeClient

pytestmark = pytest.mark.unit


class _Kube:
    """Stands in for the API client start-up would connect (nothing is called on it here)."""

    kubeconfig = "/tmp/resolved.kubeconfig"  # a name only: nothing reads it

    def close(self) -> None:
        pass

    async def whoami(self) -> str:
        return "system:serviceaccount:blacktop-system:blacktop"


def test_the_settings_the_cli_built_are_the_only_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(drift_check_seconds=7, resync_seconds=11, metrics_port=0, health_port=0)
    ran: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr(kopf, "run", lambda **kwargs: ran.update(kwargs))

    def read_again(*_: Any, **__: Any) -> Settings:
        raise AssertionError("Settings were read from the environment a second time")

    monkeypatch.setattr(Settings, "from_env", read_again)
    run_operator(settings)

    memo = ran["memo"]
    assert memo.settings is settings
    assert wiring.settings() is settings
    # Timers were registered with this object's intervals.
    timers = {h.id: h for h in kopf.get_default_registry()._spawning.get_all_handlers()}
    assert timers["service_request_drift"].interval == 7
    assert timers["environment_resync"].interval == 11

    # Start-up builds the Context from the memo's settings.
    from blacktop.handlers import startup

    monkeypatch.setattr(KubeClient, "from_kubeconfig", classmethod(lambda cls, path=None: _Kube()))
    asyncio.run(startup.configure(settings=kopf.OperatorSettings(), memo=memo))
    assert memo.ctx.settings is settings
    # OpenTofu's state backend reaches the cluster the client was resolved to, not $KUBECONFIG.
    assert memo.ctx.runners.kubeconfig == _Kube.kubeconfig

    # Registering again with other settings would leave the timers on the old ones: refused.
    with pytest.raises(RuntimeError, match="already registered"):
        wiring.use(Settings(drift_check_seconds=1))
