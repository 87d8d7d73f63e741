"""A small asynchronous client for the Kubernetes REST API.

It wraps the official ``kubernetes`` client's authenticated connection pool (kubeconfig, client
certificates, bearer tokens, in-cluster config) but speaks plain REST paths from
:mod:`blacktop.kube.resources`, so one code path serves built-in kinds and our custom resources.
The blocking HTTP calls run in worker threads (``asyncio.to_thread``): Kopf's event loop is never
blocked by the network. Every call is bounded in time (connect, read), and a server that cannot be
reached, does not answer in time, or says it cannot serve now raises
:class:`~blacktop.kube.errors.UnavailableError`, whatever the transport's own exception was.

Which cluster: :func:`resolve_kubeconfig` decides at call time, the way kubectl does. The
``kubernetes`` package reads ``$KUBECONFIG`` once, when it is imported; `blacktop run --local` sets
it later, so relying on the package's default connected the operator to no cluster at all.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client import rest as k8s_rest
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from blacktop.kube.errors import NotFoundError, UnavailableError, error_for
from blacktop.kube.informer import parse_lines
from blacktop.kube.resources import Resource, resource_for

JSON = dict[str, Any]

FIELD_MANAGER = "blacktop"
# (connect, read) seconds: long enough for a loaded apiserver, short enough that a stalled one is
# noticed and the work retried soon (settings.api_timeout_seconds overrides the read timeout).
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 20.0
# Connecting is retried (nothing was sent); a request that was sent is never repeated blindly.
_RETRIES = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=False, raise_on_status=False)


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate (files may be the client's temporary copies)."""

    server: str
    ca_file: str | None
    verify: bool
    cert_file: str | None
    key_file: str | None
    scheme: str | None
    token: str | None


class ClusterConfigError(RuntimeError):
    """No usable cluster configuration: the message says what was looked at and what to do."""


_NO_CLUSTER = (
    "no Kubernetes cluster configured: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config "
    "(inside a pod the ServiceAccount is used); `make run` starts a local cluster of its own"
)


def resolve_kubeconfig(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> str | None:
    """The kubeconfig to connect with, decided now: ``path``; else ``$KUBECONFIG`` (a list joined by
    ``os.pathsep``, as kubectl reads it); else ``~/.kube/config`` if it exists; else ``None`` (in-cluster).

    A kubeconfig the user named that does not exist is an error, never a silent fall-back to
    in-cluster config (which would fail later with a message about service hosts).
    """
    env = os.environ if environ is None else environ
    if path is not None:
        if not Path(path).expanduser().is_file():
            raise ClusterConfigError(f"kubeconfig {path} does not exist")
        return str(Path(path).expanduser())
    listed = env.get("KUBECONFIG", "")
    if listed:
        files = [str(Path(p).expanduser()) for p in listed.split(os.pathsep) if p]
        existing = [f for f in files if Path(f).is_file()]
        if not existing:
            raise ClusterConfigError(f"KUBECONFIG={listed} names no existing file")
        return os.pathsep.join(existing)
    default = (home if home is not None else Path.home()) / ".kube" / "config"
    return str(default) if default.is_file() else None


def kubeconfig_namespace(path: str | os.PathLike[str] | None = None) -> str | None:
    """The namespace of the kubeconfig's current context (what kubectl uses without -n), if it names one."""
    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=str(path) if path is not None else None)
    except (ConfigException, FileNotFoundError, TypeError):
        return None
    namespace = ((active or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


async def gather(*calls: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` of API calls, except that when one fails the others are cancelled and
    waited for before its error is raised: no call outlives its caller. (A call left running is a
    task of nobody's; Kopf's shutdown re-raises the error of any task still running when it stops,
    and one such call ended a replica that had just lost its lease during an API server stall.)"""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Client(Protocol):
    """The verbs reconcilers use: what :class:`KubeClient` offers, and what a test's fake client offers."""

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> JSON | None: ...

    async def list(
        self, resource: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[JSON]: ...

    async def create(self, obj: JSON) -> JSON: ...

    async def apply(self, obj: JSON, *, field_manager: str = FIELD_MANAGER, force: bool = True) -> JSON: ...

    async def replace(self, obj: JSON) -> JSON: ...

    async def merge_patch(
        self,
        resource: Resource,
        name: str,
        patch: JSON,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> JSON: ...

    async def delete(
        self, resource: Resource, name: str, namespace: str | None = None, *, propagation: str = "Background"
    ) -> bool: ...


class KubeClient:
    """Async facade over one authenticated ``ApiClient``."""

    def __init__(self, api_client: Any, kubeconfig: str | None = None, *, timeout: float = READ_TIMEOUT) -> None:
        api_client.configuration.retries = _RETRIES
        api_client.rest_client = k8s_rest.RESTClientObject(api_client.configuration)  # with those retries
        self._api = api_client
        self._timeout = (CONNECT_TIMEOUT, timeout)
        # The kubeconfig this client was built from (None: in-cluster or a token), so OpenTofu's
        # kubernetes backend talks to the same cluster as the operator.
        self.kubeconfig = kubeconfig

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, *, timeout: float = READ_TIMEOUT
    ) -> KubeClient:
        """Connect with the kubeconfig :func:`resolve_kubeconfig` finds, else with in-cluster config;
        ``timeout``: how long one call may wait for the answer."""
        config_file = resolve_kubeconfig(path)
        configuration = k8s_client.Configuration()
        if config_file is not None:
            try:
                k8s_config.load_kube_config(config_file=config_file, client_configuration=configuration)
            except ConfigException as exc:
                raise ClusterConfigError(f"kubeconfig {config_file}: {exc}") from exc
            return cls(k8s_client.ApiClient(configuration), kubeconfig=config_file, timeout=timeout)
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise ClusterConfigError(_NO_CLUSTER) from exc
        return cls(k8s_client.ApiClient(configuration), timeout=timeout)

    def connection(self) -> Connection:
        """The endpoint and credentials of this client, for Kopf's own API calls (its login handler)."""
        config = self._api.configuration
        header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
        scheme, _, token = (header or "").rpartition(" ")
        return Connection(
            server=str(config.host),
            ca_file=config.ssl_ca_cert,
            verify=bool(config.verify_ssl),
            cert_file=config.cert_file,
            key_file=config.key_file,
            scheme=scheme or None,
            token=token or None,
        )

    @classmethod
    def from_token(cls, server: str, token: str, ca_file: str) -> KubeClient:
        """Connect with a bearer token (used by tests that act as the chart's ServiceAccount)."""
        configuration = k8s_client.Configuration()
        configuration.host = server
        configuration.ssl_ca_cert = ca_file
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return cls(k8s_client.ApiClient(configuration))

    @property
    def server(self) -> str:
        """The API server's base URL."""
        return str(self._api.configuration.host)

    def close(self) -> None:
        """Release the connection pool."""
        self._api.close()

    # -- raw requests ---------------------------------------------------------------------------

    def request_sync(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> JSON:
        """Send one request and return the decoded JSON body, raising a classified error on failure."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, _, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query.items()) if query else None,
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.rest_client.request(
                method, url, headers=headers, body=body, _request_timeout=self._timeout
            )
            raw = response.read()
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            # Connection refused or reset, a timeout, a TLS failure: the server is not there for us.
            raise UnavailableError(0, "Unavailable", f"{type(exc).__name__}: {exc}", method, path) from None
        try:
            data: JSON = json.loads(raw) if raw else {}
        except ValueError:
            if 200 <= response.status < 300:
                raise
            data = {}  # a plain-text error, e.g. "404 page not found" for a kind whose CRD is not installed
        if not 200 <= response.status < 300:
            raise error_for(
                response.status,
                str(data.get("reason") or response.reason),
                str(data.get("message") or raw[:500]),
                method,
                path,
            )
        return data

    def stream_sync(self, path: str, *, query: Mapping[str, str] | None = None, timeout: float) -> Iterator[JSON]:
        """A watch: the JSON events of a streaming GET, one per line, until the server ends it
        (blocking: for the informers' own threads). ``timeout``: the longest quiet time."""
        method, url, headers, _, _ = self._api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=list(query.items()) if query else None,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.rest_client.request(
                method, url, headers=headers, _request_timeout=(CONNECT_TIMEOUT, timeout)
            )
            raw = response.response
            if not 200 <= raw.status < 300:
                data = json.loads(raw.data or b"{}")
                raise error_for(
                    raw.status, str(data.get("reason") or raw.reason), str(data.get("message")), method, path
                )
            try:
                yield from parse_lines(raw.stream(65536))
            finally:
                raw.release_conn()
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise UnavailableError(0, "Unavailable", f"{type(exc).__name__}: {exc}", method, path) from None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> JSON:
        """Async version of :meth:`request_sync`, run in a worker thread."""
        return await asyncio.to_thread(
            self.request_sync, method, path, body=body, content_type=content_type, query=query
        )

    async def whoami(self) -> str:
        """The username this client authenticates as (a SelfSubjectReview, which every user may create)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = await self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=review)
        return str(((answer.get("status") or {}).get("userInfo") or {}).get("username") or "")

    # -- verbs --------------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> JSON | None:
        """The object, or ``None`` if it does not exist."""
        try:
            return await self.request("GET", resource.path(namespace, name))
        except NotFoundError:
            return None

    async def list(
        self, resource: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[JSON]:
        """All objects of a kind (in a namespace, or everywhere), optionally filtered by labels."""
        query = {"labelSelector": label_selector} if label_selector else None
        data = await self.request("GET", resource.path(namespace), query=query)
        items: list[JSON] = data.get("items", [])
        return items

    async def create(self, obj: JSON) -> JSON:
        """Create an object (fails with ConflictError if it exists)."""
        resource = resource_for(obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace")
        return await self.request("POST", resource.path(namespace), body=obj)

    async def apply(self, obj: JSON, *, field_manager: str = FIELD_MANAGER, force: bool = True) -> JSON:
        """Server-side apply ``obj`` under one field manager; we own the fields we set, nothing else."""
        resource = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        query = {"fieldManager": field_manager, "force": "true" if force else "false"}
        return await self.request(
            "PATCH",
            resource.path(meta.get("namespace"), meta["name"]),
            body=obj,
            content_type="application/apply-patch+yaml",
            query=query,
        )

    async def replace(self, obj: JSON) -> JSON:
        """Replace an object (PUT). Its ``metadata.resourceVersion`` makes the update atomic: if anyone
        changed the object since it was read, this fails with ConflictError and nothing is written."""
        resource = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        return await self.request("PUT", resource.path(meta.get("namespace"), meta["name"]), body=obj)

    async def merge_patch(
        self,
        resource: Resource,
        name: str,
        patch: JSON,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> JSON:
        """JSON merge patch (RFC 7386) on an object or its subresource (``field_manager``: who owns what it sets)."""
        return await self.request(
            "PATCH",
            resource.path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
            query={"fieldManager": field_manager} if field_manager else None,
        )

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete an object; ``False`` if it was already gone (deletion is idempotent). With ``uid``,
        only that very object: one re-created under the same name raises ConflictError."""
        body: JSON = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", resource.path(namespace, name), body=body)
        except NotFoundError:
            return False
        return True
