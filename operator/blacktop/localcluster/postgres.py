"""An embedded PostgreSQL server: initdb + postgres on a free loopback port, in a temp dir.

`blacktop run --local` starts one for the postgres-database golden path, and the tests start their
own. Debian's PostgreSQL binaries are linked into the tool cache by hack/tools/install.sh
(`packages`). PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS
user, which owns its directory. The admin role has a random password and password authentication
over TCP, so the operator reaches it exactly like a remote server. The server can be stopped and
started again on the same port and data (failure tests), and paused with SIGSTOP so that
connections hang. Like the control plane's components, it gets SIGINT (fast shutdown) when the
thread that started it dies, so a killed `blacktop run` leaves no postmaster behind. Given another
``host`` (the local node's link), it listens there too, for Pods.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from blacktop.localcluster.cluster import free_port
from blacktop.toolbox import find_tool

OS_USER = "postgres"
_PR_SET_PDEATHSIG = 1


class PostgresStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


class PostgresServer:
    """One throw-away cluster (data directory + postmaster); ``with PostgresServer() as pg:``."""

    def __init__(self, *, host: str = "127.0.0.1", password: str | None = None, max_connections: int = 50) -> None:
        """``host``: where it listens besides loopback, and what its admin credentials name (a Pod on
        the local node reaches the host at the node link's host address)."""
        # Not under a private temp dir (pytest's is root-only): the server may run as `postgres`.
        self.base = Path(tempfile.mkdtemp(prefix="blacktop-pg-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.log_file = self.base / "postgres.log"
        self.host = host
        self.port = free_port()
        self.user = "postgres"
        self.password = password or secrets.token_urlsafe(18)
        self.max_connections = max_connections
        self.proc: subprocess.Popen[bytes] | None = None
        self._account = pwd.getpwnam(OS_USER) if os.geteuid() == 0 else None

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    # -- running the binaries ---------------------------------------------------------------------

    @property
    def _uid(self) -> int | None:
        # Popen's user/group/extra_groups: drop root to the `postgres` account (None: stay who we are).
        return None if self._account is None else self._account.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._account is None else self._account.pw_gid

    @property
    def _groups(self) -> list[int] | None:
        return None if self._account is None else []

    @staticmethod
    def _binary(name: str) -> str:
        # The tool cache under /root is not traversable by `postgres`: run the link's target.
        return str(find_tool(name).resolve())

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def init(self) -> None:
        """initdb with a password-protected superuser (scram over TCP, trust only on the socket)."""
        self._chown(self.base)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            result = subprocess.run(
                [
                    self._binary("initdb"),
                    f"--pgdata={self.data}",
                    f"--username={self.user}",
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                check=False,
                cwd=self.base,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        finally:
            pwfile.unlink()
        if result.returncode != 0:
            raise PostgresStartError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        if self.host != "127.0.0.1":
            # Pods come from the node's side of the link (masqueraded): a network directly attached.
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet scram-sha-256\n")

    def start(self, timeout: float = 60.0) -> None:
        """Start the postmaster (initdb first if needed) and wait until it accepts queries."""
        if not self.data.exists():
            self.init()
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self._binary("postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={','.join(dict.fromkeys(('127.0.0.1', self.host)))}",
                    "-c",
                    f"unix_socket_directories={self.base}",
                    # A throw-away development server: durability costs time and buys nothing.
                    "-c",
                    "fsync=off",
                    "-c",
                    f"max_connections={self.max_connections}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                start_new_session=True,
                preexec_fn=_fast_shutdown_with_parent,  # noqa: PLW1509  (only prctl, no locks taken)
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PostgresStartError(f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.psql("SELECT 1", check=False).returncode == 0

        _poll(ready, timeout, f"PostgreSQL on {self.host}:{self.port} to accept connections", self.log_tail)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint, exit)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def pause(self) -> None:
        """SIGSTOP the postmaster: new connections are accepted by the kernel, then hang."""
        os.kill(self._postmaster_pid(), signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the postmaster."""
        if (self.data / "postmaster.pid").exists():
            os.kill(self._postmaster_pid(), signal.SIGCONT)

    def remove(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- using it ------------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """libpq variables for the admin role: the keys of the golden path's admin Secret."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGSSLMODE": "disable",
        }

    def psql(
        self, sql: str, *, database: str = "postgres", uri: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run SQL with the real psql, as the admin (or with ``uri``); -At output."""
        target = uri or f"dbname={database}"
        env = {**os.environ, **({} if uri else self.env), "PGCONNECT_TIMEOUT": "5"}
        result = subprocess.run(
            [str(find_tool("psql")), target, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {result.stderr}")
        return result

    def query(self, sql: str, *, database: str = "postgres", uri: str | None = None) -> list[str]:
        """The rows of a query as text lines."""
        return [line for line in self.psql(sql, database=database, uri=uri).stdout.splitlines() if line]

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        if not self.log_file.exists():
            return "(no postgres log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def _fast_shutdown_with_parent() -> None:
    # Runs in the child after it dropped to `postgres` (a credential change clears the setting).
    # The signal comes when the *thread* that started the server exits: start it from the main thread.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


def _poll(probe: Callable[[], bool], timeout: float, what: str, tail: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.2)
    raise PostgresStartError(f"timed out after {timeout:.0f}s waiting for {what}:\n{tail()}")
