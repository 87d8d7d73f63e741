"""Notifications: what happened to a team's requests and environments, told to its chat or webhook.

- :mod:`blacktop.notifications.notices` (pure): which status transitions deserve a message (once
  per transition, never per reconcile) and what the message says.
- :mod:`blacktop.notifications.render` (pure): the Slack and JSON bodies, and their HMAC signature.
- :mod:`blacktop.notifications.delivery` (adapter): a bounded queue, workers that POST, retries with
  capped jittered backoff; nothing in it ever blocks or fails a reconcile.

Where messages go (a team's channels on its Environment, the platform's in the operator's
namespace) is resolved by :mod:`blacktop.controllers.notifications`, which reads the Secrets.
"""
