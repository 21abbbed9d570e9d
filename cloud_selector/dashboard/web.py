"""What page modules use: routes with a role, rendering, the request's services and user, errors,
redirects with a message, and the confirmation step. The contract is drawn in the package
docstring (cloud_selector/dashboard/__init__.py)."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"

# Roles, weakest first: each may do everything the ones before it may.
ROLES = ("reviewer", "labeler", "admin")
REVIEWER, LABELER, ADMIN = ROLES
# The navigation bar, in this order; an entry appears once a page route claims it (page(nav=...)).
NAV_ORDER = ("Overview", "Candidates", "Map", "Label", "Selection runs", "Models", "Fleet")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# ------------------------------------------------------------------ errors


class PageError(Exception):
    """Ends a request with an error page (or a JSON error for API requests) saying what to do."""

    status_code = 400
    title = "Cannot do that"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(PageError):
    pass


class Forbidden(PageError):
    status_code = 403
    title = "Not allowed"


class NotFound(PageError):
    status_code = 404
    title = "Not found"


class Conflict(PageError):
    status_code = 409
    title = "Cannot do that now"


# ------------------------------------------------------------------ roles and the request


def role_rank(role: str | None) -> int:
    """0 reviewer, 1 labeler, 2 admin; -1 for anything else (no rights at all)."""
    return ROLES.index(role) if role in ROLES else -1


def has_role(user, role: str) -> bool:
    return user is not None and role_rank(getattr(user, "role", None)) >= role_rank(role) >= 0


def current_user(request: Request):
    """The logged-in user (cloud_selector.users.User), or None on public routes."""
    return getattr(request.state, "user", None)


def require_role(request: Request, role: str) -> None:
    """Raise Forbidden (a 403 page) unless the user has `role` or a stronger one."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    user = current_user(request)
    if not has_role(user, role):
        mine = getattr(user, "role", "none")
        raise Forbidden(f"this needs the {role} role; you are {mine}. Ask an admin: "
                        f"`cloud-selector users set-role {getattr(user, 'name', 'NAME')} {role}`")


def services(request: Request):
    """The cloud's Services (catalog, blobs, registry) the app was made with."""
    return request.app.state.services


def releases(request: Request):
    """A Releases over the catalog, signing revocations with the registry's key."""
    from cloud_selector.releases import Releases

    s = services(request)
    return Releases(s.catalog, s.registry.signer)


def actor(request: Request) -> str:
    """Who did it, for release records and label events."""
    user = current_user(request)
    return f"{user.name} (dashboard)" if user is not None else "dashboard"


def wants_json(request_or_scope) -> bool:
    """API requests (under /api/, or asking for JSON and not HTML) get JSON errors, not pages."""
    scope = request_or_scope.scope if isinstance(request_or_scope, Request) else request_or_scope
    if scope["path"].startswith("/api/"):
        return True
    accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
    return "application/json" in accept and "text/html" not in accept


def form(request: Request) -> FormData:
    """The submitted form of a POST (read before the endpoint runs, so sync endpoints can use it)."""
    data = getattr(request.state, "form", None)
    return data if data is not None else FormData()


def json_body(request: Request) -> Any:
    """The request's JSON body (read before the endpoint runs); BadRequest when it is not JSON."""
    raw = getattr(request.state, "body", b"")
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON ({exc})") from exc


def int_param(value: str | None, what: str, *, default: int | None = None, lo: int | None = None,
              hi: int | None = None) -> int:
    """An integer from a form field or query parameter, within [lo, hi]; BadRequest otherwise."""
    if value is None or value == "":
        if default is None:
            raise BadRequest(f"{what} is missing")
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{what} must be an integer, got {value[:40]!r}") from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise BadRequest(f"{what} must be between {lo} and {hi}, got {number}")
    return number


# ------------------------------------------------------------------ routes


class PageRoute(Route):
    """A route that records the role it needs (tests enumerate these) and its nav entry."""

    def __init__(self, path: str, endpoint: Callable, *, methods: Sequence[str], name: str, role: str,
                 nav: str | None):
        super().__init__(path, endpoint, methods=list(methods), name=name)
        self.role = role
        self.nav = nav


def page(path: str, endpoint: Callable, *, methods: Sequence[str] = ("GET",), role: str = REVIEWER,
         nav: str | None = None, name: str | None = None) -> PageRoute:
    """A route for `endpoint(request) -> Response`, plain or async; plain ones run in a worker
    thread (catalog calls block). The user needs `role` (else a 403 page); login and CSRF are
    checked before any route (cloud_selector/dashboard/auth.py). A POST's form is in `form(request)`
    and its JSON in `json_body(request)`. `nav` names the navigation entry this page is (NAV_ORDER)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if nav is not None and set(methods) != {"GET"}:
        raise ValueError("only a GET page can be a navigation entry")

    async def guarded(request: Request) -> Response:
        require_role(request, role)
        if request.method not in SAFE_METHODS:
            request.state.body = await request.body()
            content_type = request.headers.get("content-type", "")
            if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
                request.state.form = await request.form()
        if inspect.iscoroutinefunction(endpoint):
            return await endpoint(request)
        return await run_in_threadpool(endpoint, request)

    return PageRoute(path, guarded, methods=methods, name=name or endpoint.__name__, role=role, nav=nav)


@dataclass(frozen=True)
class NavItem:
    title: str
    path: str


def nav_items(routes, user=None) -> list[NavItem]:
    """The navigation entries `user` may open, in NAV_ORDER."""
    found = {r.nav: NavItem(r.nav, r.path) for r in routes
             if isinstance(r, PageRoute) and r.nav and has_role(user, r.role)}
    order = {title: i for i, title in enumerate(NAV_ORDER)}
    return sorted(found.values(), key=lambda item: (order.get(item.title, len(order)), item.title))


# ------------------------------------------------------------------ rendering


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _ago(ms: int | None, now_ms: int | None = None) -> str:
    if not ms:
        return "never"
    seconds = max(0.0, ((now_ms or datetime.now(timezone.utc).timestamp() * 1000) - ms) / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    text = f"{x:,.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # not "-0.000"


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _make_templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, ago=_ago, size=_size, pct=_pct, num=_num, pretty_json=_pretty_json)
    env.globals.update(has_role=has_role, ROLES=ROLES)
    return Jinja2Templates(env=env)


templates = _make_templates()


def render(request: Request, template: str, context: dict | None = None, *, status_code: int = 200) -> HTMLResponse:
    """The page `template` (which extends base.html) with `context` plus: user, csrf_token, nav,
    active_nav, flash (a message from the redirect that led here)."""
    session = getattr(request.state, "session", None)
    app_state = request.app.state
    flash = app_state.sessions.read_flash(request) if hasattr(app_state, "sessions") else None
    nav = nav_items(request.app.routes, current_user(request))
    path = request.url.path
    active = max((item for item in nav if path == item.path or
                  (item.path != "/" and path.startswith(item.path.rstrip("/") + "/"))),
                 key=lambda item: len(item.path), default=None)
    full = {"user": current_user(request), "csrf_token": session.csrf if session else "", "nav": nav,
            "active_nav": active.title if active else "", "flash": flash, **(context or {})}
    response = templates.TemplateResponse(request, template, full, status_code=status_code)
    if flash is not None:
        app_state.sessions.clear_flash(response)
    return response


def redirect(request: Request, url: str, message: str = "", *, kind: str = "ok") -> RedirectResponse:
    """303 to a local `url` (after a POST), showing `message` once on the page it leads to."""
    if not url.startswith("/") or url.startswith("//"):
        raise ValueError(f"redirect to a local path, got {url!r}")
    response = RedirectResponse(url, status_code=303)
    if message:
        request.app.state.sessions.set_flash(response, message, kind)
    return response


def confirmed(request: Request) -> bool:
    """Whether this POST is the answer of a confirmation page (see `confirm`)."""
    return form(request).get("confirmed") == "yes"


def confirm(request: Request, *, title: str, question: str, details: Sequence[str] = (), button: str = "Confirm",
            fields: dict[str, str] | None = None, cancel: str = "/", danger: bool = True) -> HTMLResponse:
    """The confirmation step of a consequential POST: a page that posts the same form back to the
    same path with confirmed=yes. Usage in an endpoint: `if not confirmed(request): return confirm(...)`."""
    values = {k: v for k, v in form(request).multi_items() if k not in ("csrf_token", "confirmed")}
    values.update(fields or {})
    return render(request, "confirm.html", {"title": title, "question": question, "details": list(details),
                                            "button": button, "fields": values, "action": request.url.path,
                                            "cancel": cancel, "danger": danger})


def confirm_then(request: Request, act: Callable[[], str], *, back: str, title: str, question: str,
                 details: Sequence[str] = (), button: str = "Confirm", errors: tuple[type[Exception], ...] = (),
                 danger: bool = True) -> Response:
    """The whole consequential-POST pattern: without confirmed=yes, the confirmation page; with
    it, `act()` and a redirect to `back` showing the message it returns, or the text of one of
    `errors` (e.g. ReleaseError) as an error message."""
    if not confirmed(request):
        return confirm(request, title=title, question=question, details=details, button=button, cancel=back,
                       danger=danger)
    try:
        message = act()
    except errors as exc:
        return redirect(request, back, str(exc), kind="error")
    return redirect(request, back, message)


def error_response(request: Request, status_code: int, title: str, message: str) -> Response:
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=status_code)
    return render(request, "error.html", {"title": title, "message": message}, status_code=status_code)

