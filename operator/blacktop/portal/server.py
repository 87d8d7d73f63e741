"""The portal's HTTP server: routes, sign-in, security headers, pages rendered in worker threads.

aiohttp (which Kopf already runs its webhook server on) serves on the operator's event loop;
each page first settles on the loop what the visitor may see (cached access reviews), then builds
its rows and renders its template in a worker thread, so a large page never stalls reconciles.
Every page is read-only: the only POSTs are sign-in and sign-out, and nothing is ever written to
the cluster. Responses carry a strict Content-Security-Policy (scripts and styles from the portal
itself only, no inline script), and authenticated pages are never cached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web
from prometheus_client import CollectorRegistry

from blacktop.config import Settings
from blacktop.metrics.book import ScorecardBook
from blacktop.portal import builder, docs, plots, views
from blacktop.portal.access import COOKIE, SESSION_TTL, Access, Viewer, everyone
from blacktop.portal.schema import FIELD_PREFIX, MAX_TEXT, form_fields
from blacktop.portal.scorecard import platform_scorecard
from blacktop.portal.state import ClusterState, Snapshot

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
VIEWER = web.RequestKey("viewer", Viewer)  # who is asking, set by the sign-in middleware
PAGE_SIZE = 100  # requests per page of a list
MAX_FORM_KEYS = 200
STATIC = resources.files("blacktop.portal") / "static"
PUBLIC = ("/login", "/logout", "/healthz")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer, browsers send "Origin: null" on the sign-in POST.
    "Referrer-Policy": "same-origin",
}
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("blacktop.portal", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _form(request: web.Request) -> dict[str, str]:
    """The query string as a plain mapping, bounded (first value of a key wins)."""
    form: dict[str, str] = {}
    for key, value in request.query.items():
        if len(form) >= MAX_FORM_KEYS:
            break
        form.setdefault(key[:256], value[:MAX_TEXT])
    return form


def _page_number(request: web.Request) -> int:
    try:
        return max(1, int(request.query.get("page", "1")))
    except ValueError:
        return 1


def _safe_next(target: str) -> str:
    """Only a path on this site (no //host, no scheme): sign-in never redirects elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/catalog"


@dataclass
class Paged:
    rows: list[Any]
    page: int
    pages: int
    total: int


def paged(rows: list[Any], page: int) -> Paged:
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(page, pages)
    return Paged(rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE], page, pages, len(rows))


@dataclass
class Portal:
    """Everything the pages need: settings, the cluster state, the metrics, who may see what."""

    settings: Settings
    state: ClusterState
    registry: CollectorRegistry
    access: Access | None  # None: BLACKTOP_PORTAL_AUTH=none
    book: ScorecardBook | None = None  # the operator's product scorecard (None: none computed here)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    # -- the application ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._guard], client_max_size=64 * 1024)
        app.add_routes(
            [
                web.get("/", self.home),
                web.get("/healthz", self.healthz),
                web.get("/login", self.login_form),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/static/{file}", self.static),
                web.get("/catalog", self.catalog),
                web.get("/catalog/{name}", self.golden_path),
                web.get("/catalog/{name}/request", self.request_builder),
                web.get("/catalog/{name}/request.yaml", self.request_download),
                web.get("/api/catalog/{name}/schema", self.schema),
                web.get("/api/catalog/{name}/preview", self.preview),
                web.get("/teams", self.teams),
                web.get("/teams/{team}", self.team),
                web.get("/environments/{name}", self.environment),
                web.get("/requests", self.requests),
                web.get("/scorecard", self.scorecard),
            ]
        )
        return app

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and errors get the same headers
            self._secure(request, exc)
            raise
        self._secure(request, response)
        return response

    @staticmethod
    def _secure(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC or request.path.startswith("/static/"):
            return await handler(request)
        viewer = await self._viewer(request)
        if viewer is None:
            if request.path.startswith("/api/"):
                return web.json_response({"error": "sign in first: send a Kubernetes token"}, status=401)
            return await self._html("login.html", status=401, next=request.path_qs, error="", title="Sign in")
        request[VIEWER] = viewer
        return await handler(request)

    async def _viewer(self, request: web.Request) -> Viewer | None:
        if self.access is None:
            return everyone()
        token = ""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        elif session := request.cookies.get(COOKIE):
            token = self.access.token_of(session) or ""
        identity = await self.access.identify(token) if token else None
        return self.access.viewer(identity) if identity else None

    # -- rendering ------------------------------------------------------------------------------

    def _render(self, template: str, viewer: Viewer | None, status: int, values: Mapping[str, Any]) -> str:
        common = {
            "auth": "none" if self.access is None else "token",
            "user": viewer.identity.username if viewer and viewer.identity else "",
            "status_code": status,
            "title": "Blacktop",
        }
        return _TEMPLATES.get_template(template).render(**{**common, **values})

    async def _html(
        self, template: str, *, status: int = 200, viewer: Viewer | None = None, **values: Any
    ) -> web.Response:
        html = await asyncio.to_thread(self._render, template, viewer, status, values)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    async def _built(
        self, request: web.Request, template: str, build: Callable[..., Mapping[str, Any]], *args: Any
    ) -> web.Response:
        """Build a page's values and render it, both in a worker thread (the rows of 1,000 requests
        take milliseconds of CPU the event loop should not spend)."""
        started = time.perf_counter()
        viewer = request[VIEWER]
        html = await asyncio.to_thread(lambda: self._render(template, viewer, 200, build(*args)))
        response = web.Response(text=html, content_type="text/html", charset="utf-8")
        response.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    async def _forbidden(self, request: web.Request, what: str) -> web.Response:
        return await self._html("error.html", status=403, viewer=request[VIEWER], title="Not for you", message=what)

    async def _not_found(self, request: web.Request, what: str) -> web.Response:
        return await self._html("error.html", status=404, viewer=request[VIEWER], title="Not found", message=what)

    # -- sign-in --------------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/catalog")

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self.access is None:
            raise web.HTTPFound("/catalog")
        target = _safe_next(request.query.get("next", "/catalog"))
        return await self._html("login.html", next=target, error="", title="Sign in")

    async def login(self, request: web.Request) -> web.StreamResponse:
        if self.access is None:
            raise web.HTTPFound("/catalog")
        origin = request.headers.get("Origin")
        if origin and origin not in (f"{request.scheme}://{request.host}", f"https://{request.host}"):
            raise web.HTTPForbidden(text="sign-in from another site is refused")
        form = await request.post()
        token = str(form.get("token") or "").strip()
        target = _safe_next(str(form.get("next") or "/catalog"))
        identity = await self.access.identify(token)
        if identity is None:
            error = "The cluster did not accept this token (expired, mistyped, or not a Kubernetes token)."
            return await self._html("login.html", status=401, next=target, error=error, title="Sign in")
        redirect = web.HTTPSeeOther(target)
        secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
        redirect.set_cookie(
            COOKIE,
            self.access.open_session(token),
            max_age=int(SESSION_TTL),
            httponly=True,
            samesite="Strict",
            secure=secure,
            path="/",
        )
        logger.info("portal: %s signed in", identity.username)
        raise redirect

    async def logout(self, request: web.Request) -> web.StreamResponse:
        if self.access is not None and (session := request.cookies.get(COOKIE)):
            self.access.close_session(session)
        redirect = web.HTTPSeeOther("/login" if self.access is not None else "/catalog")
        redirect.del_cookie(COOKIE, path="/")
        raise redirect

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in ("portal.css", "portal.js"):
            raise web.HTTPNotFound()
        body = (STATIC / name).read_bytes()
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        response = web.Response(body=body, content_type=kind, charset="utf-8")
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    # -- the catalog ------------------------------------------------------------------------------

    async def _catalog_viewer(self, request: web.Request) -> Viewer | None:
        viewer: Viewer = request[VIEWER]
        return viewer if await viewer.may("list", "goldenpaths") else None

    async def catalog(self, request: web.Request) -> web.StreamResponse:
        if await self._catalog_viewer(request) is None:
            return await self._forbidden(request, "You may not list golden paths (kubectl get goldenpaths).")
        snapshot = self.state.snapshot()

        def build() -> Mapping[str, Any]:
            entries = views.catalog(snapshot.golden_paths.values(), snapshot.requests.values(), snapshot.environments)
            return {"entries": entries, "title": "Catalog"}

        return await self._built(request, "catalog.html", build)

    async def golden_path(self, request: web.Request) -> web.StreamResponse:
        if await self._catalog_viewer(request) is None:
            return await self._forbidden(request, "You may not list golden paths (kubectl get goldenpaths).")
        snapshot = self.state.snapshot()
        name = request.match_info["name"]
        body = snapshot.golden_paths.get(name)
        if body is None:
            return await self._not_found(request, f"There is no golden path {name!r} (any more).")
        root = self.settings.modules_root

        def build() -> Mapping[str, Any]:
            entry = views.catalog_entry(body, snapshot.requests.values(), snapshot.environments)
            return {
                "entry": entry,
                "docs": docs.documentation(root, entry.module),
                "schema_json": json.dumps(entry.schema, indent=2, sort_keys=False),
                "title": entry.name,
            }

        return await self._built(request, "golden_path.html", build)

    async def schema(self, request: web.Request) -> web.StreamResponse:
        if await self._catalog_viewer(request) is None:
            return web.json_response({"error": "you may not list golden paths"}, status=403)
        body = self.state.snapshot().golden_paths.get(request.match_info["name"])
        if body is None:
            return web.json_response({"error": "no such golden path"}, status=404)
        return web.json_response((body.get("spec") or {}).get("parameters") or {"type": "object"})

    # -- the request builder --------------------------------------------------------------------

    async def _builder_inputs(self, request: web.Request) -> tuple[Snapshot, set[str], Mapping[str, Any] | None]:
        viewer: Viewer = request[VIEWER]
        snapshot = self.state.snapshot()
        allowed = await viewer.namespaces_where("create", "servicerequests", snapshot.environments)
        userinfo = viewer.identity.userinfo if viewer.identity else None
        return snapshot, allowed, userinfo

    def _preview(
        self,
        snapshot: Snapshot,
        name: str,
        form: Mapping[str, str],
        allowed: set[str],
        userinfo: Mapping[str, Any] | None,
    ) -> builder.Preview:
        return builder.preview(self.settings, snapshot, name, form, environments=allowed, userinfo=userinfo)

    async def request_builder(self, request: web.Request) -> web.StreamResponse:
        if await self._catalog_viewer(request) is None:
            return await self._forbidden(request, "You may not list golden paths (kubectl get goldenpaths).")
        name = request.match_info["name"]
        snapshot, allowed, userinfo = await self._builder_inputs(request)
        body = snapshot.golden_paths.get(name)
        if body is None:
            return await self._not_found(request, f"There is no golden path {name!r} (any more).")
        form = _form(request)

        def build() -> Mapping[str, Any]:
            entry = views.catalog_entry(body, snapshot.requests.values(), snapshot.environments)
            environments = [
                views.environment_row(snapshot.environments[env], 0, self.clock())
                for env in sorted(allowed)
                if env in snapshot.environments
            ]
            given = {k: v for k, v in form.items() if k.startswith(FIELD_PREFIX)} if form else None
            return {
                "entry": entry,
                "fields": form_fields(entry.schema, given),
                "environments": environments,
                "form": form,
                "preview": self._preview(snapshot, name, form, allowed, userinfo),
                "identity_known": userinfo is not None,
                "title": f"Request {entry.name}",
            }

        return await self._built(request, "builder.html", build)

    async def preview(self, request: web.Request) -> web.StreamResponse:
        if await self._catalog_viewer(request) is None:
            return web.json_response({"error": "you may not list golden paths"}, status=403)
        snapshot, allowed, userinfo = await self._builder_inputs(request)
        found = await asyncio.to_thread(
            self._preview, snapshot, request.match_info["name"], _form(request), allowed, userinfo
        )
        return web.json_response(found.as_json())

    async def request_download(self, request: web.Request) -> web.StreamResponse:
        if await self._catalog_viewer(request) is None:
            return await self._forbidden(request, "You may not list golden paths (kubectl get goldenpaths).")
        snapshot, allowed, userinfo = await self._builder_inputs(request)
        found = self._preview(snapshot, request.match_info["name"], _form(request), allowed, userinfo)
        if not found.yaml:
            return await self._html(
                "error.html",
                status=400,
                viewer=request[VIEWER],
                title="Not ready yet",
                message="Fill in a name and an environment first.",
            )
        response = web.Response(text=found.yaml, content_type="application/yaml", charset="utf-8")
        response.headers["Content-Disposition"] = f'attachment; filename="{quote(found.file_name)}"'
        return response

    # -- teams, environments, requests ----------------------------------------------------------

    async def _visible(self, request: web.Request, snapshot: Snapshot) -> tuple[dict[str, JSON], set[str]]:
        """(environments the visitor may list, namespaces whose requests they may list)."""
        viewer: Viewer = request[VIEWER]
        environments = snapshot.environments if await viewer.may("list", "environments") else {}
        namespaces = await viewer.namespaces_where(
            "list", "servicerequests", set(environments) | set(snapshot.by_namespace)
        )
        return environments, namespaces

    async def teams(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.state.snapshot()
        environments, namespaces = await self._visible(request, snapshot)

        def build() -> Mapping[str, Any]:
            requests_of = {env: snapshot.requests_in(env) if env in namespaces else None for env in environments}
            return {"teams": views.team_summaries(environments.values(), requests_of), "title": "Teams"}

        return await self._built(request, "teams.html", build)

    def _request_page(self, bodies: list[JSON], page: int) -> Paged:
        """One page of requests in order: all are sorted, rows are built for the page alone."""
        found = paged(views.sort_requests(bodies), page)
        now = self.clock()
        found.rows = [views.request_row(body, now) for body in found.rows]
        return found

    def _environment_rows(self, snapshot: Snapshot, names: list[str]) -> list[views.EnvironmentRow]:
        now = self.clock()
        return [
            views.environment_row(snapshot.environments[n], len(snapshot.requests_in(n)), now) for n in sorted(names)
        ]

    async def team(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.state.snapshot()
        environments, namespaces = await self._visible(request, snapshot)
        team = request.match_info["team"]
        names = [n for n, env in environments.items() if (env.get("spec") or {}).get("team") == team]
        if not names:
            return await self._not_found(request, f"No environment of team {team!r} is visible to you.")
        return await self._environments_page(
            request, snapshot, names, namespaces=namespaces, team=team, title=f"Team {team}"
        )

    async def environment(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.state.snapshot()
        environments, namespaces = await self._visible(request, snapshot)
        name = request.match_info["name"]
        if name not in environments:
            return await self._not_found(request, f"There is no environment {name!r} you may see.")
        team = str((environments[name].get("spec") or {}).get("team") or "")
        title = f"Environment {name}"
        return await self._environments_page(request, snapshot, [name], namespaces=namespaces, team=team, title=title)

    async def _environments_page(
        self, request: web.Request, snapshot: Snapshot, names: list[str], *, namespaces: set[str], team: str, title: str
    ) -> web.StreamResponse:
        """Environments and their requests (those the visitor may list), the newest problems first."""
        page = _page_number(request)

        def build() -> Mapping[str, Any]:
            shown = [r for n in names if n in namespaces for r in snapshot.requests_in(n)]
            return {
                "team": team,
                "environments": self._environment_rows(snapshot, names),
                "hidden": sorted(n for n in names if n not in namespaces),
                "requests": self._request_page(shown, page),
                "title": title,
            }

        return await self._built(request, "environments.html", build)

    async def requests(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.state.snapshot()
        _, namespaces = await self._visible(request, snapshot)
        page = _page_number(request)
        problems_only = request.query.get("problems") == "1"

        def build() -> Mapping[str, Any]:
            shown = [r for ns in namespaces for r in snapshot.requests_in(ns)]
            listed = [r for r in shown if views.is_problem(r)] if problems_only else shown
            return {
                "requests": self._request_page(listed, page),
                "problems_only": problems_only,
                "hidden": len(snapshot.requests) - len(shown),
                "title": "Requests",
            }

        return await self._built(request, "requests.html", build)

    # -- the scorecard ----------------------------------------------------------------------------

    async def scorecard(self, request: web.Request) -> web.StreamResponse:
        viewer: Viewer = request[VIEWER]
        if not (await viewer.may("list", "environments") and await viewer.may("list", "goldenpaths")):
            return await self._forbidden(
                request, "The scorecard sums up every team: it is for those who may list environments and golden paths."
            )

        def build() -> Mapping[str, Any]:
            card = platform_scorecard(self.registry, self.book)
            adoption = [plots.Bar(gp, n, f"{n:.0f} request(s)") for gp, n in card.adoption]
            costs = [
                plots.Bar(
                    c.team,
                    c.cost,
                    f"{c.cost:.2f} / {c.budget:.2f} {c.currency}"
                    if c.budget is not None
                    else f"{c.cost:.2f} {c.currency}",
                    marker=c.budget,
                    alert=c.budget is not None and c.cost > c.budget,
                )
                for c in card.costs
            ]
            return {
                "card": card,
                "lead_time_plot": plots.histogram(
                    "Provisioning lead time (creation to first Ready)", card.lead_time_buckets, "request(s)"
                ),
                "adoption_plot": plots.bar_chart("ServiceRequests per golden path", adoption),
                "cost_plot": plots.bar_chart("Monthly cost per team (line: budget)", costs),
                "title": "Scorecard",
            }

        return await self._built(request, "scorecard.html", build)


@dataclass
class RunningPortal:
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(portal: Portal) -> RunningPortal:
    """Listen on the configured address and port."""
    runner = web.AppRunner(portal.app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, portal.settings.portal_address, portal.settings.portal_port)
    await site.start()
    url = f"http://{portal.settings.portal_address}:{portal.settings.portal_port}/"
    logger.info("portal: serving %s (sign-in: %s)", url, portal.settings.portal_auth)
    return RunningPortal(runner, url)
