"""Notification channels: where a team (on its Environment) sends what happens to its requests.

A channel names its kind (a Slack-compatible incoming webhook, or a generic JSON webhook signed
with HMAC-SHA256) and a Secret in the environment's own namespace that holds the URL (key ``url``)
and, for a generic webhook, the signing key (key ``hmacKey``). URLs and keys never appear in a spec
or a status: a Slack webhook URL is itself a credential. The platform team's channels are Secrets
in the operator's namespace (see README, Notifications); they use the same keys and events.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from blacktop.api.common import DNS_LABEL, DNS_SUBDOMAIN, SpecModel

# Keys of a channel Secret.
URL_KEY = "url"
HMAC_KEY = "hmacKey"
EVENTS_KEY = "events"  # platform channels only: comma-separated events (absent: all)


class NotificationEvent(StrEnum):
    """What a channel can be told about; each is sent once per transition, never per reconcile."""

    READY = "Ready"  # a ServiceRequest became Ready (first time, for a new spec, or after a failure)
    FAILED = "Failed"  # a ServiceRequest failed (reason and message)
    AWAITING_APPROVAL = "AwaitingApproval"  # a ServiceRequest's plan waits for approval (with the command)
    DRIFTED = "Drifted"  # a ServiceRequest's infrastructure no longer matches its module
    EXPIRING = "Expiring"  # an Environment's TTL runs out within 24 hours
    BUDGET_NEARLY_SPENT = "BudgetNearlySpent"  # an Environment has used 90% of its monthly budget


class ChannelType(StrEnum):
    """How a message is delivered."""

    SLACK = "Slack"  # Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): {"text": ...}
    WEBHOOK = "Webhook"  # generic JSON webhook, body signed with HMAC-SHA256 (X-Blacktop-Signature-256)


class LocalSecretRef(SpecModel):
    """A Secret in the same namespace as the object that names it (no namespace: a team can only
    name its own Secrets)."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name.")


class NotificationChannel(SpecModel):
    """One place an environment's events are sent to."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Channel name, shown in status and Events.")
    type: ChannelType = Field(description="Slack (incoming webhook) or Webhook (generic JSON, HMAC-signed).")
    secret_ref: LocalSecretRef = Field(
        description="Secret in the environment's namespace with key `url` (an https URL) and, for Webhook, "
        "`hmacKey` (the HMAC-SHA256 signing key)."
    )
    events: list[NotificationEvent] = Field(
        default_factory=list,
        max_length=6,
        description="Events to send: Ready, Failed, AwaitingApproval, Drifted, Expiring, BudgetNearlySpent "
        "(empty: all).",
    )

    def wants(self, event: NotificationEvent) -> bool:
        """Whether this channel asked for ``event``."""
        return not self.events or event in self.events


def parse_events(text: str) -> tuple[tuple[NotificationEvent, ...], list[str]]:
    """``"Ready, Failed"`` → the events, and the words that are not events (empty text: all events)."""
    events: list[NotificationEvent] = []
    unknown: list[str] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        try:
            events.append(NotificationEvent(word))
        except ValueError:
            unknown.append(word)
    return tuple(events), unknown
