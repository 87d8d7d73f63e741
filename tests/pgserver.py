"""A real PostgreSQL server for tests: initdb + postgres on a free loopback port, in a temp dir.

Debian's PostgreSQL binaries are linked into the tool cache by hack/tools/install.sh (`packages`).
PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres`
OS user (runuser); its directory is owned by that user. The admin role has a random password and
password authentication over TCP, so the operator reaches it exactly like a remote server. The
server can be stopped and started again on the same port and data (failure tests), and paused
with SIGSTOP so that connections hang (a slow apply to crash the operator in).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from blacktop.toolbox import find_tool
from helpers import free_port, wait_for

OS_USER = "postgres"


class PostgresServer:
    """One throw-away cluster (data directory + postmaster)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        """``host``: where it listens (besides loopback) and what its admin credentials name; a Pod on
        the local node reaches the host at the node link's host address."""
        # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
        self.base = Path(tempfile.mkdtemp(prefix="blacktop-pg-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.log_file = self.base / "postgres.log"
        self.host = host
        self.port = free_port()
        self.user = "postgres"
        self.password = "canary-" + secrets.token_hex(12)  # also the canary the leak tests grep for
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    def _cmd(self, *argv: str) -> list[str]:
        # The tool cache under /root is not traversable by `postgres`: run the link's target.
        argv = (str(Path(argv[0]).resolve()), *argv[1:])
        return ["runuser", "-u", OS_USER, "--", *argv] if self._as_root else list(argv)

    def _chown(self, path: Path) -> None:
        if self._as_root:
            shutil.chown(path, OS_USER, OS_USER)

    def init(self) -> None:
        """initdb with a password-protected superuser (scram over TCP, trust only on the socket)."""
        self._chown(self.base)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        subprocess.run(
            self._cmd(
                str(find_tool("initdb")),
                "-D",
                str(self.data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
        if self.host != "127.0.0.1":
            # Pods come from the node's side of the link (masqueraded): a network directly attached.
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet scram-sha-256\n")

    def start(self, timeout: float = 60.0) -> None:
        """Start the postmaster (initdb first if needed) and wait until it accepts queries."""
        if not self.data.exists():
            self.init()
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            self._cmd(
                str(find_tool("postgres")),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={','.join(dict.fromkeys(('127.0.0.1', self.host)))}",
                "-c",
                f"unix_socket_directories={self.base}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.psql("SELECT 1", check=False).returncode == 0

        wait_for(ready, timeout=timeout, interval=0.2, what="PostgreSQL to accept connections")

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
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        """libpq variables for the admin role (the golden path's provider credentials)."""
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
            raise AssertionError(f"psql {sql!r} failed: {result.stderr}")
        return result

    def query(self, sql: str, **kwargs: str) -> list[str]:
        """The rows of a query as text lines."""
        return [line for line in self.psql(sql, **kwargs).stdout.splitlines() if line]  # type: ignore[arg-type]

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return "(no postgres log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
