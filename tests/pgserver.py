"""The tests' PostgreSQL server: the embedded server of `blacktop run --local`
(blacktop.localcluster.postgres), with a password the leak tests can grep for."""

from __future__ import annotations

import secrets

from blacktop.localcluster.postgres import PostgresServer as _EmbeddedServer


class PostgresServer(_EmbeddedServer):
    """One throw-away server per test module; its admin password starts with ``canary-``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host=host, password="canary-" + secrets.token_hex(12))
