"""The README's quick start, run as written against `make run`, on a machine that has nothing else.

The commands come from the README itself: the fenced block after the `<!-- quickstart:` marker,
one step per command, each run in a fresh shell that has only what a second terminal would have
(an empty HOME, a default PATH, and the lines `make run` printed for it). The operator is started
with the Makefile's own `run` recipe (`blacktop run --local --install`), with no KUBECONFIG and no
~/.kube/config. A README that drifts from what works fails here.

Also: `--local` on a cluster the user already has uses it, their database server and their
GoldenPaths, and overwrites none of them; without any cluster configuration the operator stops at
once with one clear message.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from blacktop.toolbox import bin_dir, cache_dir, find_tool
from helpers import REPO, Kubectl, apply_json, free_port, get, install_blacktop, secret_values, wait_for
from pgserver import PostgresServer

pytestmark = pytest.mark.e2e

MARKER = "<!-- quickstart:"
FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's default
BANNER_END = "Ctrl-C here stops everything."
ADMIN_SECRET = yaml.safe_load((REPO / "examples" / "postgres-admin-secret.yaml").read_text())
REQUEST = yaml.safe_load((REPO / "examples" / "servicerequest-postgres.yaml").read_text())


# -- what the README and the Makefile say -------------------------------------------------------------


def quickstart_steps() -> list[str]:
    """The commands of the README's quick start block, in order (comment-only and blank lines dropped)."""
    text = (REPO / "README.md").read_text()
    assert MARKER in text, "README.md lost its quick start marker"
    block = re.search(r"```sh\n(.*?)```", text.split(MARKER, 1)[1], re.S)
    assert block is not None, "no ```sh block after the quick start marker"
    steps: list[str] = []
    pending = ""
    for line in block.group(1).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if not line.endswith("\\"):
            steps.append(pending.strip())
            pending = ""
    return steps


def readme_sample_output() -> list[str]:
    """The lines of the README's sample of what `make run` prints (the ```text block of "Two commands")."""
    text = (REPO / "README.md").read_text().split("## Two commands", 1)[1]
    block = re.search(r"```text\n(.*?)```", text, re.S)
    assert block is not None, "README.md lost its sample of `make run`'s output"
    return block.group(1).splitlines()


def second_terminal_lines(output: str) -> list[str]:
    """The lines `make run` prints for a second terminal (the indented lines after the heading)."""
    block = output.split("In a second terminal:\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines()]


def _shape(line: str) -> str:
    """`cd`, `export PATH`, `export KUBECONFIG`: what a line does, without the machine's paths."""
    return line.split("=", 1)[0] if line.startswith("export ") else line.split(" ", 1)[0]


def make_run_command() -> list[str]:
    """`make run`'s command line, from the Makefile's own recipe."""
    makefile = (REPO / "Makefile").read_text()
    venv = re.search(r"^VENV := (\S+)$", makefile, re.M)
    recipe = re.search(r"^run:.*\n\t@?(.+)$", makefile, re.M)
    assert venv is not None
    assert recipe is not None, "the Makefile has no one-line `run` recipe"
    return shlex.split(recipe.group(1).replace("$(VENV)", venv.group(1)))


def test_readme_quickstart_covers_the_whole_story() -> None:
    """The block keeps every step the story needs, in this order (the e2e below runs whatever is there)."""
    steps = quickstart_steps()
    wanted = [
        r"^kubectl apply -f examples/environment\.yaml",
        r"^kubectl wait --for=condition=Ready environment/payments-dev",
        r"^kubectl apply -f examples/servicerequest-postgres\.yaml",
        r"^kubectl wait --for=condition=Ready servicerequest/orders-db -n payments-dev",
        r"""^psql "\$\(kubectl get secret orders-db-connection -n payments-dev -o jsonpath='\{\.data\.uri\}' \| base64 -d\)" -c 'select 1'""",
        r"^kubectl delete -f examples/servicerequest-postgres\.yaml",
        r"^kubectl delete -f examples/environment\.yaml",
    ]
    positions = []
    for pattern in wanted:
        found = [i for i, step in enumerate(steps) if re.search(pattern, step)]
        assert found, f"the README quick start lost the step {pattern!r}:\n" + "\n".join(steps)
        positions.append(found[0])
    assert positions == sorted(positions), "\n".join(steps)
    assert make_run_command() == [".venv/bin/blacktop", "run", "--local", "--install"]


# -- `blacktop run` as a process --------------------------------------------------------------------


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command name of every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if rest[0] == "Z":
            continue
        children.setdefault(int(rest[1]), []).append(int(entry.name))
        names[int(entry.name)] = name
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = names.get(child, "?")
        todo.extend(children.get(child, []))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class BlacktopRun:
    """`make run`'s command as a child process on a machine with an empty HOME and its own TMPDIR."""

    def __init__(self, home: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        # Every temp file or folder of the run goes here; traversable by `postgres` (the server's user).
        self.tmpdir = Path(tempfile.mkdtemp(prefix="blacktop-run-test-"))
        self.tmpdir.chmod(0o755)
        self.home = home
        self.log = log
        self.argv = [*make_run_command(), *extra]
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.tmpdir),
            # The shared tool cache (a fresh HOME has none; nothing must be rebuilt).
            "BLACKTOP_CACHE_DIR": str(cache_dir()),
            # Free ports: other operators may run on this machine.
            "BLACKTOP_METRICS_PORT": str(free_port()),
            "BLACKTOP_HEALTH_PORT": str(free_port()),
            "BLACKTOP_WEBHOOK_PORT": str(free_port()),
            "BLACKTOP_PORTAL_PORT": str(free_port()),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BlacktopRun:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(self.tmpdir)], check=False)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> str:
        """The output once the operator runs and the second terminal's lines are printed."""
        assert self.proc is not None

        def printed() -> str | None:
            text = self.output()
            if BANNER_END in text:
                return text
            assert self.proc is not None
            assert self.proc.poll() is None, f"`{' '.join(self.argv)}` exited with {self.proc.returncode}:\n{text}"
            return None

        return wait_for(printed, timeout=timeout, interval=0.3, what="`make run` to print the second terminal's lines")

    def second_terminal(self) -> list[str]:
        return second_terminal_lines(self.output())

    def kubeconfig(self) -> Path:
        match = re.search(r"^export KUBECONFIG=(\S+)$", "\n".join(self.second_terminal()), re.M)
        assert match is not None, self.output()
        return Path(shlex.split(match.group(1))[0])

    def ctrl_c(self, timeout: float = 90) -> tuple[int, dict[int, str]]:
        """SIGINT to the process group, as Ctrl-C in its terminal: (exit code, processes it had)."""
        assert self.proc is not None
        had = _descendants(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        wait_for(
            lambda: not [pid for pid in had if _running(pid)], timeout=15, what=f"the children of `blacktop run` {had}"
        )
        return code, had

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.tmpdir.iterdir())


class SecondTerminal:
    """A new shell per step with only a fresh terminal's environment plus the printed lines."""

    def __init__(self, home: Path, lines: list[str]) -> None:
        self.home = home
        self.prelude = "\n".join(["set -euo pipefail", *lines])
        self.timings: list[tuple[str, float]] = []

    def run(self, step: str, *, timeout: float = 420) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", f"{self.prelude}\n{step}"],
            cwd=self.home,
            env={"PATH": FRESH_PATH, "HOME": str(self.home), "LANG": "C.UTF-8", "TERM": "dumb"},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.timings.append((step.split("  #", 1)[0].strip(), time.monotonic() - started))
        return result


def _fail_step(step: str, result: subprocess.CompletedProcess[str], run: BlacktopRun) -> str:
    return (
        f"README quick start step failed ({result.returncode}):\n  {step}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}\n--- make run (tail)\n" + "\n".join(run.output().splitlines()[-60:])
    )


def _admin_query(kubectl: Kubectl, sql: str) -> list[str]:
    """A query on the database server of the admin Secret, with its credentials (as the platform team)."""
    meta = ADMIN_SECRET["metadata"]
    env = {**os.environ, **secret_values(kubectl, meta["name"], meta["namespace"]), "PGCONNECT_TIMEOUT": "5"}
    result = subprocess.run(
        [str(find_tool("psql")), "dbname=postgres", "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line]


def run_quickstart(run: BlacktopRun, kubectl: Kubectl, on_ready: Callable[[str], None] | None = None) -> SecondTerminal:
    """Every step of the README's quick start in a second terminal, checking what each claims."""
    terminal = SecondTerminal(run.home, run.second_terminal())
    # The printed PATH makes the pinned kubectl the one a newcomer runs (not some other on PATH).
    which = terminal.run("command -v kubectl")
    assert which.stdout.strip() == str(bin_dir() / "kubectl"), which
    database = ""
    name, namespace = REQUEST["metadata"]["name"], REQUEST["metadata"]["namespace"]
    for step in quickstart_steps():
        if step.startswith("kubectl delete -f examples/servicerequest-postgres.yaml"):
            assert _admin_query(kubectl, f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == ["1"]
        result = terminal.run(step)
        assert result.returncode == 0, _fail_step(step, result, run)
        if step.startswith("kubectl wait --for=condition=Ready servicerequest/"):
            database = secret_values(kubectl, f"{name}-connection", namespace)["database"]
            # The tenant boundary: another team cannot read the credentials; the owning team can.
            other = kubectl(
                "--as=mallory@example.com",
                "--as-group=fraud",
                "get",
                "secret",
                f"{name}-connection",
                "-n",
                namespace,
                check=False,
            )
            assert other.returncode != 0
            assert "forbidden" in other.stderr.lower()
            kubectl(
                "--as=olivia@example.com", "--as-group=payments", "get", "secret", f"{name}-connection", "-n", namespace
            )
            if on_ready is not None:
                on_ready(database)
        if step.startswith("psql "):
            assert result.stdout.split() == ["?column?", "----------", "1", "(1", "row)"], result.stdout
        if step.startswith("kubectl delete -f examples/servicerequest-postgres.yaml"):
            # Deleting the request destroyed what it made: the database and its role are gone.
            assert _admin_query(kubectl, f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == []
            assert _admin_query(kubectl, f"SELECT 1 FROM pg_roles WHERE rolname = '{database}'") == []
            assert get(kubectl, "servicerequest", name, "-n", namespace) is None
        if step.startswith("kubectl delete -f examples/environment.yaml"):
            assert get(kubectl, "environment", namespace) is None
    assert database, "the quick start never waited for its ServiceRequest"
    return terminal


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty home: no ~/.kube/config, no caches."""
    path = tmp_path / "home"
    path.mkdir()
    return path


# -- the quick start ------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_readme_quickstart_works_as_written_against_make_run(home: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    with BlacktopRun(home, tmp_path / "make-run.log") as run:
        output = run.wait_ready()
        ready_after = time.monotonic() - started
        assert "==> starting a local cluster (" in output
        assert "==> starting an embedded PostgreSQL" in output
        assert re.search(r"PostgreSQL: embedded at 127\.0\.0\.1:\d+", output), output
        # The portal the last lines point at answers, without sign-in, on loopback.
        portal = re.search(r"^The developer portal \(read-only\): (http://127\.0\.0\.1:\d+/)$", output, re.M)
        assert portal is not None, output[-2000:]
        assert portal.group(1) == f"http://127.0.0.1:{run.env['BLACKTOP_PORTAL_PORT']}/"
        url = portal.group(1) + "catalog"

        def catalog_shown() -> bool:
            # The portal's cache fills from the operator's watches, which start as the operator does.
            with urllib.request.urlopen(url, timeout=30) as page:
                return "postgres-database" in page.read().decode()

        wait_for(catalog_shown, timeout=60, interval=0.5, what="the portal's catalog to show postgres-database")
        kubectl = Kubectl(run.kubeconfig())
        assert run.kubeconfig().is_relative_to(run.tmpdir)
        # The README's sample shows the same steps and the same kind of lines for the second terminal.
        sample = readme_sample_output()
        assert [line for line in sample if line.startswith("==> ")] == re.findall(r"^==> .*$", output, re.M)
        assert [_shape(line) for line in second_terminal_lines("\n".join(sample))] == [
            _shape(line) for line in run.second_terminal()
        ]
        terminal = run_quickstart(run, kubectl)
        # The admin Secret the embedded server got has the example's name, namespace and keys.
        meta = ADMIN_SECRET["metadata"]
        assert set(secret_values(kubectl, meta["name"], meta["namespace"])) == set(ADMIN_SECRET["stringData"])
        code, had = run.ctrl_c()
        output = run.output()
        assert code == 0, output[-3000:]
        assert {"etcd", "kube-apiserver", "postgres"} <= set(had.values()), had
        assert any(name.startswith("kube-controller") for name in had.values()), had
        assert output.rstrip().endswith("stopped; nothing left running"), output[-2000:]
        # Nothing left in its temp dir: cluster, database, webhook certificate, workspaces, client files.
        assert run.leftovers() == [], run.leftovers()
        # A newcomer sees no errors: every line Kopf logged at ERROR level is a bug or a race to fix.
        errors = [line for line in output.splitlines() if "[ERROR" in line]
        assert errors == [], "\n".join(errors)
    timings = "\n".join(f"  {seconds:6.1f}s  {step}" for step, seconds in terminal.timings)
    print(f"\nmake run ready after {ready_after:.1f}s; quick start steps:\n{timings}")


# -- a cluster and a database server the user already has -------------------------------------------


@pytest.fixture(scope="module")
def users_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    """The user's own cluster with Blacktop's CRDs and an edited GoldenPath `tiny` of their own."""

    from blacktop.localcluster import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("users-cluster")) as cluster:
        install_blacktop(cluster.kubeconfig)
        kubectl = Kubectl(cluster.kubeconfig)
        tiny = yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text())
        tiny["spec"]["description"] = "The platform team's own tiny"
        apply_json(kubectl, tiny)
        yield kubectl


def _catalog_kept(kubectl: Kubectl) -> None:
    tiny = get(kubectl, "goldenpath", "tiny")
    assert tiny is not None
    assert tiny["spec"]["description"] == "The platform team's own tiny"


@pytest.mark.timeout(600)
def test_run_local_uses_your_cluster_and_your_database_and_overwrites_neither(
    users_cluster: Kubectl, home: Path, tmp_path: Path
) -> None:
    kubectl = users_cluster
    with PostgresServer() as theirs:
        secret = {**ADMIN_SECRET, "stringData": theirs.env}
        apply_json(kubectl, secret)
        meta = ADMIN_SECRET["metadata"]
        before = get(kubectl, "secret", meta["name"], "-n", meta["namespace"])
        assert before is not None
        env = {"KUBECONFIG": str(kubectl.kubeconfig)}
        with BlacktopRun(home, tmp_path / "make-run.log", env=env) as run:
            output = run.wait_ready()
            assert f"==> using your cluster (KUBECONFIG={kubectl.kubeconfig}); no local cluster" in output
            assert "kept your GoldenPath/tiny (the example catalog is create-only" in output
            assert "created GoldenPath/postgres-database" in output
            assert f"PostgreSQL: yours (Secret {meta['namespace']}/{meta['name']} exists)" in output
            assert run.kubeconfig() == kubectl.kubeconfig
            started = set(_descendants(run.proc.pid).values())  # type: ignore[union-attr]
            assert not started & {"etcd", "kube-apiserver", "postgres"}, started
            _catalog_kept(kubectl)

            def in_their_server(database: str) -> None:
                assert theirs.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == ["1"]

            run_quickstart(run, kubectl, on_ready=in_their_server)
            code, _ = run.ctrl_c()
            assert code == 0, run.output()[-3000:]
            assert run.leftovers() == []
        # Their Secret, their GoldenPath and their cluster are as they were.
        after = get(kubectl, "secret", meta["name"], "-n", meta["namespace"])
        assert after is not None
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        _catalog_kept(kubectl)
        assert kubectl("get", "--raw", "/readyz").stdout == "ok"
        kubectl("delete", "secret", meta["name"], "-n", meta["namespace"])


@pytest.mark.timeout(300)
def test_run_local_on_your_cluster_without_a_database_brings_one_and_takes_it_away(
    users_cluster: Kubectl, home: Path, tmp_path: Path
) -> None:
    kubectl = users_cluster
    meta = ADMIN_SECRET["metadata"]
    kubectl("delete", "secret", meta["name"], "-n", meta["namespace"], "--ignore-not-found")
    with BlacktopRun(home, tmp_path / "make-run.log", "--kubeconfig", str(kubectl.kubeconfig)) as run:
        output = run.wait_ready()
        assert "no local cluster" in output
        assert "==> starting an embedded PostgreSQL" in output
        values = secret_values(kubectl, meta["name"], meta["namespace"])
        assert f"PostgreSQL: embedded at {values['PGHOST']}:{values['PGPORT']}" in output
        assert re.search(r"kept your [^(]*GoldenPath/tiny", output), output
        assert _admin_query(kubectl, "SELECT 1") == ["1"]
        code, had = run.ctrl_c()
        assert code == 0, run.output()[-3000:]
        assert "postgres" in had.values()
        assert "kube-apiserver" not in had.values()
        assert run.leftovers() == []
    # The Secret pointed at a server that is gone: it went with it. The cluster stays.
    assert get(kubectl, "secret", meta["name"], "-n", meta["namespace"]) is None
    _catalog_kept(kubectl)
    assert kubectl("get", "--raw", "/readyz").stdout == "ok"


# -- no cluster at all ---------------------------------------------------------------------------------------


def test_operator_without_any_cluster_stops_at_once_with_one_clear_message(home: Path, tmp_path: Path) -> None:
    """No --kubeconfig, no KUBECONFIG, no ~/.kube/config, not in a pod: no retries, no ERROR spam."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "BLACKTOP_CACHE_DIR": str(cache_dir()),
        "BLACKTOP_METRICS_PORT": str(free_port()),
        "BLACKTOP_HEALTH_PORT": str(free_port()),
        "BLACKTOP_WEBHOOK_PORT": str(free_port()),
    }
    blacktop = REPO / make_run_command()[0]

    def blacktop_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(blacktop), "run", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = blacktop_run()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "blacktop run: the operator did not start: no Kubernetes cluster configured: pass --kubeconfig" in output
    assert "Traceback" not in output
    assert "Service host/port is not set" not in output
    assert len([line for line in output.splitlines() if "ERROR" in line]) <= 2, output
    # A kubeconfig that is named but missing is said before anything starts.
    missing = blacktop_run("--local", "--kubeconfig", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"blacktop run: kubeconfig {tmp_path / 'nope'} does not exist"
    assert missing.stdout == ""
