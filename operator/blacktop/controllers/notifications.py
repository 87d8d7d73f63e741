"""Where notices go: a team's channels (on its Environment) and the platform team's (in the operator's
namespace), read from their Secrets when a notice is delivered, never cached.

- A team's channel is an entry of ``Environment.spec.notifications`` naming a Secret *in the
  environment's own namespace* (keys ``url``, and ``hmacKey`` for a Webhook). The name has no
  namespace, so a team can only ever use its own Secrets; its URL must start with one of
  ``BLACKTOP_NOTIFICATION_ALLOWED_URLS`` (default ``https://``), so a team cannot make the operator
  post to the cluster's insides over plain HTTP.
- A platform channel is a Secret in the operator's namespace (where tenants have no access) labelled
  ``platform.blacktop.dev/notification-channel: Slack|Webhook``, with the same keys and an optional
  ``events`` key (comma-separated); it gets every team's notices.

Reading the Secrets at delivery time means a rotated URL or key takes effect with the next message.
A channel whose Secret is missing or incomplete is skipped (the Environment's
``NotificationsConfigured`` condition tells the team); a message that cannot be delivered after its
retries posts a ``NotificationFailed`` Event on the Environment, naming the channel, never its URL.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from blacktop.api.conditions import Reason
from blacktop.api.environment import EnvironmentSpec
from blacktop.api.notifications import (
    EVENTS_KEY,
    HMAC_KEY,
    URL_KEY,
    ChannelType,
    NotificationChannel,
    parse_events,
)
from blacktop.builders import naming
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.kube import events
from blacktop.kube.errors import KubeApiError
from blacktop.kube.resources import ENVIRONMENTS, resource_for
from blacktop.notifications.delivery import PLATFORM, TEAM, Dispatcher, HttpPoster, Notifier, Target
from blacktop.notifications.notices import SERVICE_REQUEST, Memory, Notice

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
SECRET = resource_for("v1", "Secret")


def secret_values(secret: JSON | None) -> dict[str, str]:
    """A Secret's data, decoded (keys that are not valid UTF-8 base64 are left out)."""
    values: dict[str, str] = {}
    for key, raw in ((secret or {}).get("data") or {}).items():
        try:
            values[key] = base64.b64decode(raw).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
    return values


def channel_problem(
    channel_type: ChannelType, values: dict[str, str], allowed_urls: tuple[str, ...] | None
) -> str | None:
    """What is wrong with a channel's Secret data (None: usable). ``allowed_urls`` None: any http(s) URL."""
    url = values.get(URL_KEY, "").strip()
    if not url:
        return f"has no key {URL_KEY!r} (the webhook URL)"
    prefixes = allowed_urls if allowed_urls is not None else ("https://", "http://")
    if not url.startswith(prefixes):
        return f"key {URL_KEY!r} must start with {' or '.join(prefixes)}"
    if channel_type is ChannelType.WEBHOOK and not values.get(HMAC_KEY):
        return f"has no key {HMAC_KEY!r} (the HMAC-SHA256 signing key a Webhook channel requires)"
    return None


async def team_channel_problems(ctx: Context, namespace: str, spec: EnvironmentSpec) -> list[str]:
    """For the Environment's status: one line per channel that cannot be used (no value ever quoted)."""
    problems: list[str] = []
    for channel in spec.notifications:
        ref = channel.secret_ref.name
        secret = await ctx.client.get(SECRET, ref, namespace)
        if secret is None:
            problems.append(f"channel {channel.name}: Secret {namespace}/{ref} does not exist")
            continue
        problem = channel_problem(channel.type, secret_values(secret), ctx.settings.notification_allowed_urls)
        if problem:
            problems.append(f"channel {channel.name}: Secret {namespace}/{ref} {problem}")
    return problems


async def _team_targets(ctx: Context, env: JSON, notice: Notice) -> list[Target]:
    try:
        spec = EnvironmentSpec.model_validate(env.get("spec") or {})
    except ValidationError:
        return []
    namespace = str(env["metadata"]["name"])
    targets: list[Target] = []
    for channel in spec.notifications:
        if not channel.wants(notice.event):
            continue
        target = await _team_target(ctx, namespace, channel)
        if target is not None:
            targets.append(target)
    return targets


async def _team_target(ctx: Context, namespace: str, channel: NotificationChannel) -> Target | None:
    values = secret_values(await ctx.client.get(SECRET, channel.secret_ref.name, namespace))
    problem = channel_problem(channel.type, values, ctx.settings.notification_allowed_urls)
    if problem:
        logger.info("notifications: team channel %s/%s skipped: its Secret %s", namespace, channel.name, problem)
        return None
    return Target(
        name=f"{namespace}/{channel.name}",
        scope=TEAM,
        type=channel.type,
        url=values[URL_KEY].strip(),
        hmac_key=values.get(HMAC_KEY),
    )


async def _platform_targets(ctx: Context, notice: Notice) -> list[Target]:
    secrets = await ctx.client.list(SECRET, ctx.settings.namespace, label_selector=naming.LABEL_NOTIFICATION_CHANNEL)
    targets: list[Target] = []
    for secret in secrets:
        name = secret["metadata"]["name"]
        label = (secret["metadata"].get("labels") or {}).get(naming.LABEL_NOTIFICATION_CHANNEL, "")
        try:
            channel_type = ChannelType(label)
        except ValueError:
            logger.warning("notifications: platform channel %s skipped: label value must be Slack or Webhook", name)
            continue
        values = secret_values(secret)
        wanted, _ = parse_events(values.get(EVENTS_KEY, ""))
        if wanted and notice.event not in wanted:
            continue
        problem = channel_problem(channel_type, values, None)
        if problem:
            logger.warning("notifications: platform channel %s skipped: its Secret %s", name, problem)
            continue
        targets.append(
            Target(
                name=name,
                scope=PLATFORM,
                type=channel_type,
                url=values[URL_KEY].strip(),
                hmac_key=values.get(HMAC_KEY),
            )
        )
    return targets


async def _environment_of(ctx: Context, notice: Notice) -> JSON | None:
    if notice.kind == SERVICE_REQUEST and notice.namespace:
        return await lookup.environment_of(ctx, notice.namespace)
    return await ctx.client.get(ENVIRONMENTS, notice.environment)


async def resolve(ctx: Context, notice: Notice) -> tuple[Notice, list[Target]]:
    """The notice with its team, and every channel that wants it (the team's first, then the platform's)."""
    env = await _environment_of(ctx, notice)
    targets: list[Target] = []
    if env is not None:
        notice = notice.with_team(str((env.get("spec") or {}).get("team") or "") or None)
        targets += await _team_targets(ctx, env, notice)
    return notice, targets + await _platform_targets(ctx, notice)


async def report_failure(ctx: Context, notice: Notice, target: Target, detail: str) -> None:
    """A team's message that could not be delivered: a Warning Event on its Environment says so."""
    if target.scope != TEAM:
        return  # the platform's own channels: the log and blacktop_notifications_total tell the SREs
    env = await ctx.client.get(ENVIRONMENTS, notice.environment)
    if env is None:
        return
    subject = f"{notice.kind} {notice.namespace + '/' if notice.namespace else ''}{notice.name}"
    message = f"notification {notice.event.value} about {subject} to channel {target.name} failed: {detail}"
    try:
        await events.post_event(ctx.client, env, events.WARNING, Reason.NOTIFICATION_FAILED, message)
    except KubeApiError:
        logger.info("notifications: could not post the failure Event for %s", notice.environment)


def start(ctx: Context) -> Notifier:
    """Build the notifier from Settings, start its workers and put it into the context."""
    settings = ctx.settings
    poster = HttpPoster(settings.notification_timeout_seconds)

    async def resolver(notice: Notice) -> tuple[Notice, list[Target]]:
        return await resolve(ctx, notice)

    async def give_up(notice: Notice, target: Target, detail: str) -> None:
        await report_failure(ctx, notice, target, detail)

    dispatcher = Dispatcher(
        resolver,
        ctx.metrics,
        queue_size=settings.notification_queue_size,
        workers=settings.notification_workers,
        max_attempts=settings.notification_max_attempts,
        backoff=settings.notification_backoff_seconds,
        backoff_cap=settings.notification_backoff_cap_seconds,
        poster=poster,
        give_up=give_up,
        rng=random.Random(),  # noqa: S311 (jitter)
    )
    dispatcher.start()
    ctx.notifier = Notifier(Memory(), dispatcher, closers=(poster.close,))
    return ctx.notifier


def observe(ctx: Context, kind: str, body: JSON, *, deleted: bool) -> None:
    """Feed one watch event to the notifier (a no-op before start-up put it in place)."""
    if ctx.notifier is not None:
        ctx.notifier.observe(kind, body, datetime.now(UTC), deleted=deleted)
