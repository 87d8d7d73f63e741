"""Where OpenTofu runs: the choice between the runners, and the pod runner (both sides of it).

A layer of its own between the controllers and the adapters, because the pod runner composes two
adapters: the Kubernetes client (:mod:`blacktop.kube`) to start and watch runner pods, and the
terraform adapter (:mod:`blacktop.terraform`), whose Runner protocol it implements and whose
subprocess runner does the work inside the pod. The adapters stay independent of each other, and
the controllers still see only :class:`blacktop.terraform.runner.Runners`.

- :func:`runners_for`: ``settings.runner`` ``local`` (the subprocess runner) or ``pod``.
- :mod:`.pod_runner`: the operator's side; :mod:`.agent`: the pod's side (``blacktop runner``);
  :mod:`.pods`: the objects a run is made of; :mod:`.exchange`: what travels between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blacktop.config import Settings
from blacktop.terraform.runner import Runners

if TYPE_CHECKING:  # the pod's side imports this package too: it never loads the Kubernetes client
    from blacktop.kube.client import Client


def runners_for(settings: Settings, client: Client, *, kubeconfig: str | None = None) -> Runners:
    """The runners ``settings.runner`` names (imported on demand: the pod side never loads the other)."""
    if settings.runner == "pod":
        from blacktop.runners.pod_runner import PodRunners

        return PodRunners(client, settings)
    from blacktop.terraform.subprocess_runner import SubprocessRunners

    # OpenTofu's state backend reaches the cluster of the operator's client (its kubeconfig; None: in-cluster).
    return SubprocessRunners.from_settings(settings, kubeconfig=kubeconfig)
