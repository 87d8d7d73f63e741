"""Real git servers on loopback for the tests of git module sources: never the internet.

- :class:`GitRepo`: a working repository the test commits modules to and tags, exported bare.
- :class:`GitDaemon`: git's own ``git daemon`` (git://), anonymous, read-only.
- :class:`GitHttpServer`: git's smart-HTTP ``git http-backend`` behind a tiny threaded HTTP server
  that demands basic auth (a private repository), the way a forge serves https.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers import free_port, wait_for

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Platform Team",
    "GIT_AUTHOR_EMAIL": "platform@example.com",
    "GIT_COMMITTER_NAME": "Platform Team",
    "GIT_COMMITTER_EMAIL": "platform@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


class GitRepo:
    """A repository under ``root/<name>.git`` (bare, what servers export) fed from a work tree."""

    def __init__(self, root: Path, name: str = "modules") -> None:
        self.root = root
        self.name = name
        self.work = root / "work" / name
        self.bare = root / "served" / f"{name}.git"
        self.work.mkdir(parents=True)
        self.git("init", "--quiet", "--initial-branch=main")
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "--quiet", "--bare", str(self.bare)], check=True, env=self._env())
        self.git("remote", "add", "origin", str(self.bare))

    def _env(self) -> dict[str, str]:
        return {**os.environ, **_GIT_ENV}

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=self.work, capture_output=True, text=True, env=self._env(), check=False
        )
        assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    def commit_module(self, path: str, source: Path | dict[str, str], message: str) -> str:
        """Replace folder ``path`` with the module ``source`` (a folder, or file name → text); commit, push."""
        target = self.work / path
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(source, Path):
            shutil.copytree(source, target)
        else:
            target.mkdir(parents=True)
            for name, text in source.items():
                (target / name).write_text(text)
        self.git("add", "--all")
        self.git("commit", "--quiet", "-m", message)
        self.git("push", "--quiet", "origin", "HEAD:refs/heads/main")
        return self.git("rev-parse", "HEAD")

    def tag(self, name: str, *, force: bool = False, annotated: bool = True) -> str:
        """Tag HEAD (``force``: move an existing tag) and push the tag; returns the commit."""
        args = ["tag", *(["-f"] if force else []), *(["-a", "-m", name] if annotated else []), name]
        self.git(*args)
        self.git("push", "--quiet", *(["--force"] if force else []), "origin", f"refs/tags/{name}")
        return self.git("rev-parse", "HEAD")


def _wait_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def git_daemon(repo: GitRepo) -> Iterator[str]:
    """``git daemon`` exporting the repository; yields its git:// URL."""
    port = free_port()
    served = repo.bare.parent
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={served}",
            str(served),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **_GIT_ENV},
    )
    try:
        wait_for(lambda: proc.poll() is None and _wait_listening(port), timeout=20, what="git daemon to listen")
        yield f"git://127.0.0.1:{port}/{repo.bare.name}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _Backend(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` (CGI) for each request after checking basic auth."""

    server: _GitHttp

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read assertions, not access logs
        return

    def _authorised(self) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.server.username}:{self.server.password}".encode()).decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.server.refused += 1
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="private modules"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _cgi(self) -> None:
        if not self._authorised():
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.server.username,
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        result = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode(errors="replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()


class _GitHttp(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, username: str, password: str) -> None:
        super().__init__(("127.0.0.1", 0), _Backend)
        self.root = root
        self.username = username
        self.password = password
        self.refused = 0  # requests without the right credentials


@contextmanager
def git_http_server(repo: GitRepo, username: str, password: str) -> Iterator[tuple[str, _GitHttp]]:
    """Smart HTTP with basic auth; yields the repository's http:// URL and the server (for ``refused``)."""
    server = _GitHttp(repo.bare.parent, username, password)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{repo.bare.name}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
