"""Operator settings, read once from ``BLACKTOP_*`` environment variables.

Every knob has a safe default so `make run` needs none; the Helm chart sets them from values.
Parsing is pure (it takes the environment as a mapping), so tests build settings without touching
``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_REPO_MODULES = Path(__file__).resolve().parents[2] / "terraform-modules"


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    """Everything the operator can be told at start-up."""

    model_config = ConfigDict(frozen=True)

    namespace: str = Field("blacktop-system", description="Namespace of the operator: state Secrets, leases.")
    metrics_port: int = Field(8080, description="Port of the Prometheus /metrics endpoint (0 disables it).")
    health_port: int = Field(8081, description="Port of Kopf's liveness endpoint (0 disables it).")
    modules_root: Path = Field(_REPO_MODULES, description="Folder holding the golden paths' modules.")
    max_concurrent_runs: int = Field(
        os.cpu_count() or 2, ge=1, description="OpenTofu runs at once, cluster-wide (in pod mode: runner pods)."
    )
    max_concurrent_runs_per_team: int | None = Field(
        None,
        ge=1,
        description="Runs of one team at once (its Environments' requests); default half the cluster-wide "
        "limit, rounded up, so no team can fill every slot. Free slots go fairly to the teams that wait.",
    )
    run_timeout_seconds: int = Field(1800, description="A Terraform run taking longer is terminated.")
    resync_seconds: float = Field(60.0, description="How often every object is reconciled without a change.")
    ttl_check_seconds: float = Field(5.0, description="How often environments are checked for expiry.")
    drift_check_seconds: float = Field(
        60.0, description="How often each request is looked at for a due drift check (golden paths set the interval)."
    )
    team_group_template: str = Field("{team}", description="Group name of a team's members; {team} is replaced.")
    platform_admin_groups: tuple[str, ...] = Field(
        ("blacktop:platform-admins", "system:masters"), description="Groups that may act for any team."
    )
    monitoring_namespace: str = Field("monitoring", description="Namespace allowed to scrape environments.")
    reserved_namespaces: tuple[str, ...] = Field(
        (),
        description="More names (shell patterns like platform-*) no Environment may take, besides default, kube-*, "
        "the operator's namespace and the monitoring namespace.",
    )
    terraform_binary: str = Field(
        "tofu", description="tofu (default) or terraform, found in the tool cache or on PATH."
    )
    workspace_root: Path = Field(
        Path(tempfile.gettempdir()) / "blacktop-workspaces", description="Where per-request workspaces live."
    )
    max_failures_before_stalled: int = Field(5, description="Consecutive failures after which a request is Stalled.")
    # Retries. A failed run backs off exponentially (with jitter) from the base to the cap; a Stalled
    # request is still retried, slowly, so a fixed cause clears it without anyone touching it.
    backoff_base_seconds: float = Field(5.0, gt=0, description="Retry delay after the first failed run (doubles).")
    backoff_cap_seconds: float = Field(300.0, gt=0, description="Longest retry delay between failed runs.")
    stalled_retry_seconds: float = Field(600.0, gt=0, description="Retry delay of a Stalled request.")
    dependency_retry_seconds: float = Field(
        30.0, gt=0, description="How often a request waiting for its golden path or credentials Secret looks again."
    )
    blocked_retry_seconds: float = Field(
        60.0,
        gt=0,
        description="Retry delay of work blocked by something a human must fix: a destroy whose golden path is "
        "gone, an environment child the API server refused.",
    )
    deletion_poll_seconds: float = Field(
        3.0, gt=0, description="How often a deleting Environment checks whether its ServiceRequests are gone."
    )
    run_grace_seconds: float = Field(
        15.0,
        gt=0,
        description="After SIGTERM (timeout, shutdown) a run has this long to release its lock, then SIGKILL.",
    )
    infrastructure_backoff_base_seconds: float = Field(
        1.0,
        gt=0,
        description="Retry delay after a failure of the operator's own infrastructure (ApiUnavailable, "
        "WorkspaceError: its API server, its disk), doubling; such failures never make a request Stalled, so "
        "requests recover within seconds of the fix.",
    )
    infrastructure_backoff_cap_seconds: float = Field(
        10.0, gt=0, description="Longest retry delay after failures of the operator's own infrastructure."
    )
    api_timeout_seconds: float = Field(
        20.0, gt=0, description="How long one of the operator's API calls may wait for the answer."
    )
    state_lock_attempts: int = Field(
        3, ge=1, description="Times taking a state lock is retried when someone moves the Lease meanwhile."
    )
    # Where runs happen. "local": OpenTofu is a child process of the operator (make run, no node).
    # "pod": each run is a pod of its own in the operator's namespace (the Helm chart's default).
    runner: Literal["local", "pod"] = Field("local", description="Where OpenTofu runs: local (subprocess) or pod.")
    runner_image: str | None = Field(
        None,
        description="Image of runner pods (pod mode; a golden path may name its own); the chart sets the operator's.",
    )
    runner_image_pull_secrets: tuple[str, ...] = Field((), description="Pull Secrets of runner pods (pod mode).")
    runner_cpu_request: str = Field("100m", description="Default CPU request of a runner pod.")
    runner_memory_request: str = Field("256Mi", description="Default memory request of a runner pod.")
    runner_cpu_limit: str = Field("1", description="Default CPU limit of a runner pod.")
    runner_memory_limit: str = Field("1Gi", description="Default memory limit of a runner pod.")
    runner_start_timeout_seconds: float = Field(
        300.0, gt=0, description="A runner pod not running after this long (unschedulable, no image) fails its run."
    )
    runner_keep_failed_seconds: float = Field(
        600.0, ge=0, description="How long the pod of a failed run is kept for `kubectl logs` before it is removed."
    )
    runner_keep_failed_max: int = Field(20, ge=0, description="At most this many pods of failed runs are kept.")
    allowed_providers: tuple[str, ...] = Field(
        ("hashicorp/random", "cyrilgdn/postgresql", "blacktop/postgresql", "hashicorp/kubernetes"),
        description="Providers golden-path modules may use (namespace/type).",
    )
    module_cache_root: Path = Field(
        Path(tempfile.gettempdir()) / "blacktop-module-cache",
        description="Where git commits and copies of folder modules that revisions name are kept.",
    )
    module_cache_entries: int = Field(32, ge=1, description="Commits (and folder copies) kept in the module cache.")
    module_max_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest module tree fetched from git (bytes).")
    git_timeout_seconds: float = Field(120.0, gt=0, description="A git command taking longer is stopped.")
    rollout_check_seconds: float = Field(
        10.0, gt=0, description="How often each golden path's rollout is advanced (a batch per look at most)."
    )
    worker_threads: int = Field(16, description="Threads for blocking calls (Kubernetes API, file I/O).")
    webhook_port: int = Field(9443, description="Port of the HTTPS admission webhook (0: any free port).")
    webhook_cert_dir: Path | None = Field(
        None, description="Folder with tls.crt/tls.key (and optional ca.crt) to serve; unset: generated at start-up."
    )
    webhook_manage_config: bool = Field(
        True, description="Apply the ValidatingWebhookConfiguration `blacktop` (local mode); the chart sets false."
    )
    webhook_host: str = Field("127.0.0.1", description="Host in the webhook URL the apiserver calls (local mode).")
    portal_port: int = Field(0, ge=0, le=65535, description="Port of the read-only developer portal (0: no portal).")
    portal_address: str = Field(
        "127.0.0.1", description="Address the portal listens on (the chart sets 0.0.0.0, behind its Service)."
    )
    portal_auth: Literal["token", "none"] = Field(
        "token",
        description="token: every visitor signs in with a Kubernetes token and sees what RBAC lets them list; "
        "none: no sign-in, everything visible (only allowed on a loopback address, as in `make run`).",
    )

    @model_validator(mode="after")
    def _portal_sign_in_off_only_on_loopback(self) -> Settings:
        # Without sign-in the portal shows every team's environments and requests to whoever can
        # connect: that is acceptable on a developer's own machine, never on a pod's address.
        if self.portal_port and self.portal_auth == "none" and not _is_loopback(self.portal_address):
            raise ValueError(
                f"BLACKTOP_PORTAL_AUTH=none serves every team's requests without sign-in, so it is only allowed on "
                f"a loopback address, not {self.portal_address!r}; use BLACKTOP_PORTAL_AUTH=token"
            )
        return self

    inputs_check_seconds: float = Field(
        15.0,
        gt=0,
        description="How often a Ready request with inputs looks at its sources; a changed output re-applies it.",
    )
    notification_queue_size: int = Field(
        1000, ge=1, description="Notifications waiting for delivery (retries included); more are dropped and counted."
    )
    notification_workers: int = Field(4, ge=1, description="Notifications delivered at once.")
    notification_max_attempts: int = Field(8, ge=1, description="Attempts per message and channel before giving up.")
    notification_backoff_seconds: float = Field(
        2.0, gt=0, description="First retry delay of a failed delivery; doubles (with jitter) up to the cap."
    )
    notification_backoff_cap_seconds: float = Field(300.0, gt=0, description="Longest delay between two attempts.")
    notification_timeout_seconds: float = Field(5.0, gt=0, description="Timeout of one delivery (HTTP POST).")
    notification_allowed_urls: tuple[str, ...] = Field(
        ("https://",),
        description="URL prefixes a team's channels may post to (the platform's own channels are not limited).",
    )
    webhook_client_ca: Path | None = Field(
        None,
        description="CA bundle (PEM) that signs the apiserver's client certificate for webhook calls; set, the "
        "webhook refuses every connection without such a certificate. Unset: any client may post reviews.",
    )
    webhook_client_names: tuple[str, ...] = Field(
        ("kube-apiserver-webhook-client",),
        description="Names (common name or DNS SAN) the apiserver's webhook client certificate may carry; empty: "
        "any certificate the CA signed (only right for a CA that signs nothing else).",
    )
    webhook_max_body_bytes: int = Field(
        8 * 1024 * 1024, description="Admission reviews larger than this are refused with a readable message."
    )
    cel_cost_limit: int = Field(
        10_000_000,
        description="Largest estimated worst-case cost of a guardrail rule (checked when a policy is applied).",
    )
    guardrail_timeout_seconds: float = Field(
        2.0, description="Deadline of one guardrail evaluation; past it the request is denied, naming the rule."
    )
    guardrail_workers: int = Field(2, description="Processes evaluating guardrail rules (off the event loop).")
    leftover_check_seconds: float = Field(
        60.0, description="How often state left by requests that are gone (a removed finalizer) is looked for."
    )

    @property
    def team_run_limit(self) -> int:
        """Runs of one team at once (max_concurrent_runs_per_team, else half the cluster-wide limit)."""
        if self.max_concurrent_runs_per_team is not None:
            return min(self.max_concurrent_runs_per_team, self.max_concurrent_runs)
        return max(1, -(-self.max_concurrent_runs // 2))

    # High availability: replicas elect a leader with a coordination Lease; only the leader reconciles,
    # every replica answers admission reviews. A leader that cannot renew within the renew deadline
    # stops its runs and exits before the lease can pass to another replica.
    leader_election: bool = Field(True, description="Elect a leader among replicas (the Lease below).")
    leader_lease_name: str = Field("blacktop-leader", description="The coordination Lease, in `namespace`.")
    leader_lease_seconds: float = Field(
        10.0, gt=0, description="How long a leader's lease lasts without renewal: a standby takes over after it."
    )
    leader_renew_deadline_seconds: float = Field(
        6.0, gt=0, description="A leader that could not renew for this long stops its runs and exits."
    )
    leader_retry_seconds: float = Field(
        1.5, gt=0, description="How often the lease is renewed, or looked at by a standby."
    )
    pod_name: str = Field(
        "",
        description="This replica's Pod (the chart sets it from the downward API). The leader labels it "
        "`blacktop.dev/leader=true`, so Services of what only the leader serves (the portal) reach the leader; "
        "empty outside a cluster: no label.",
    )

    @model_validator(mode="after")
    def _leases_make_sense(self) -> Settings:
        if not self.leader_retry_seconds < self.leader_renew_deadline_seconds < self.leader_lease_seconds:
            raise ValueError(
                "leader election needs leader_retry_seconds < leader_renew_deadline_seconds < leader_lease_seconds "
                "(a leader must give up before its lease can pass to another replica)"
            )
        return self

    @property
    def leader_stop_grace_seconds(self) -> float:
        """SIGTERM to SIGKILL of the runs of a leader that lost its lease: all gone before it can pass."""
        return max(0.5, self.leader_lease_seconds - self.leader_renew_deadline_seconds - 1.0)

    def team_group(self, team: str) -> str:
        """The group whose members belong to ``team``."""
        return self.team_group_template.format(team=team)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``BLACKTOP_<FIELD>`` variables (comma-separated for lists)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(f"BLACKTOP_{name.upper()}")
            if raw is None:
                continue
            if field.annotation == tuple[str, ...]:
                values[name] = tuple(part.strip() for part in raw.split(",") if part.strip())
            else:
                values[name] = raw
        return cls.model_validate(values)
