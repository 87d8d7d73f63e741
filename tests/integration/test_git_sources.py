"""Git module sources against real git servers on loopback: git daemon and smart HTTP with basic auth."""

from __future__ import annotations

from pathlib import Path

import pytest

from blacktop.terraform.sources import GitAuth, GitCache, SourceError
from gitserver import GitRepo, git_daemon, git_http_server

pytestmark = pytest.mark.integration

MODULE = {"main.tf": 'output "version" {\n  value = "one"\n}\n'}
MODULE_TWO = {"main.tf": 'output "version" {\n  value = "two"\n}\n'}


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "git")


def test_refs_resolve_to_commits_and_a_commit_is_fetched_once(repo: GitRepo, tmp_path: Path) -> None:
    first = repo.commit_module("modules/svc", MODULE, "one")
    repo.tag("v1.0.0")
    repo.tag("light", annotated=False)
    second = repo.commit_module("modules/svc", MODULE_TWO, "two")
    cache = GitCache(tmp_path / "cache")
    with git_daemon(repo) as url:
        assert cache.resolve(url, "v1.0.0") == first  # an annotated tag gives its commit, not the tag object
        assert cache.resolve(url, "light") == first
        assert cache.resolve(url, "main") == second
        assert cache.resolve(url, first) == first  # a full commit is taken as is
        with pytest.raises(SourceError, match="ref 'v9' not found"):
            cache.resolve(url, "v9")
        tree = cache.checkout(url, first)
        assert (tree / "modules/svc/main.tf").read_text() == MODULE["main.tf"]
        newer = cache.checkout(url, second)
        assert (newer / "modules/svc/main.tf").read_text() == MODULE_TWO["main.tf"]
    # The server is gone: what was fetched is served from the cache, unchanged.
    assert cache.checkout(url, first) == tree
    assert (tree / "modules/svc/main.tf").read_text() == MODULE["main.tf"]


def test_a_moved_tag_resolves_to_its_new_commit_and_old_trees_stay(repo: GitRepo, tmp_path: Path) -> None:
    first = repo.commit_module("svc", MODULE, "one")
    repo.tag("stable")
    cache = GitCache(tmp_path / "cache")
    with git_daemon(repo) as url:
        old_tree = cache.checkout(url, cache.resolve(url, "stable"))
        second = repo.commit_module("svc", MODULE_TWO, "two")
        repo.tag("stable", force=True)
        assert cache.resolve(url, "stable") == second != first
        assert (cache.checkout(url, second) / "svc/main.tf").read_text() == MODULE_TWO["main.tf"]
    assert (old_tree / "svc/main.tf").read_text() == MODULE["main.tf"]


def test_private_repository_over_http_with_basic_auth(repo: GitRepo, tmp_path: Path) -> None:
    commit = repo.commit_module("svc", MODULE, "one")
    repo.tag("v1")
    cache = GitCache(tmp_path / "cache")
    password = "s3cret-token-value"
    with git_http_server(repo, "deployer", password) as (url, server):
        with pytest.raises(SourceError) as anonymous:
            cache.resolve(url, "v1")
        assert server.refused >= 1
        with pytest.raises(SourceError) as wrong:
            cache.resolve(url, "v1", GitAuth(username="deployer", password="wrong-password"))
        assert "wrong-password" not in str(wrong.value)
        assert "listing the refs of" in str(anonymous.value)
        auth = GitAuth.from_secret_data({"username": "deployer", "password": password})
        assert cache.resolve(url, "v1", auth) == commit
        tree = cache.checkout(url, commit, auth)
        assert (tree / "svc/main.tf").read_text() == MODULE["main.tf"]


def test_the_cache_is_bounded_and_big_commits_are_refused(repo: GitRepo, tmp_path: Path) -> None:
    commits = [repo.commit_module("svc", {"main.tf": f"# {i}\n"}, f"c{i}") for i in range(3)]
    cache = GitCache(tmp_path / "cache", max_trees=2)
    with git_daemon(repo) as url:
        for commit in commits:
            cache.checkout(url, commit)
        trees = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "cache" / "trees").iterdir())
        assert trees == sorted(commits[1:])  # the least recently used one went
        big = repo.commit_module("svc", {"main.tf": "#" * 5000}, "big")
        with pytest.raises(SourceError, match="more than the 1000 a module may have"):
            GitCache(tmp_path / "small", max_bytes=1000).checkout(url, big)


def test_links_out_of_the_repository_are_refused(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit_module("svc", MODULE, "one")
    (repo.work / "svc" / "passwd").symlink_to("/etc/passwd")
    repo.git("add", "--all")
    repo.git("commit", "--quiet", "-m", "link out")
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/main")
    commit = repo.git("rev-parse", "HEAD")
    with git_daemon(repo) as url, pytest.raises(SourceError, match="cannot be unpacked safely"):
        GitCache(tmp_path / "cache").checkout(url, commit)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///etc", "must start with https://"),
        ("ext::sh -c touch% /tmp/pwned", "must start with https://"),
        ("https://user:pw@example.com/repo.git", "must not contain credentials"),
    ],
)
def test_urls_git_must_not_touch_are_refused(tmp_path: Path, url: str, words: str) -> None:
    with pytest.raises(SourceError, match=words):
        GitCache(tmp_path / "cache").resolve(url, "main")
