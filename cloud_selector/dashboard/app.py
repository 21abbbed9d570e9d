"""`create_app`: the dashboard as one Starlette application over the cloud's Services."""

from __future__ import annotations

import base64
import hashlib
import importlib
import logging
import pkgutil

from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from cloud_selector.dashboard import auth, files
from cloud_selector.dashboard.web import (
    REVIEWER,
    TEMPLATE_DIR,
    PageError,
    PageRoute,
    error_response,
    page,
)

log = logging.getLogger(__name__)

PAGES_PACKAGE = "cloud_selector.dashboard.pages"
LOGIN_CSS = "login.css"  # inlined in the login page (static files need a login), allowed by its CSP hash


def page_routes() -> list[Route]:
    """The routes of every module in cloud_selector/dashboard/pages/, in module-name order."""
    package = importlib.import_module(PAGES_PACKAGE)
    found: list[Route] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{PAGES_PACKAGE}.{info.name}")
        if not callable(getattr(module, "routes", None)):
            raise TypeError(f"{module.__name__} must define routes() -> list[Route] (see cloud_selector.dashboard)")
        for route in module.routes():
            if not isinstance(route, PageRoute):
                raise TypeError(f"{module.__name__}: make every route with cloud_selector.dashboard.web.page() so "
                                f"it states its role (got {route!r})")
            found.append(route)
    return found


def create_app(services, *, secret_key: bytes, secure_cookies: bool = True, session_max_age_s: int =
               auth.DEFAULT_MAX_AGE_S, login_throttle: auth.LoginThrottle | None = None) -> Starlette:
    """The dashboard over `services` (catalog, blobs, registry). `secret_key` (32+ bytes) signs
    sessions; `secure_cookies=False` only for tests over plain http on a non-loopback host."""
    from cloud_selector.users import UserStore

    users = UserStore(services.catalog)
    sessions = auth.Sessions(secret_key, max_age_s=session_max_age_s, secure=secure_cookies)
    login_css = (TEMPLATE_DIR / LOGIN_CSS).read_text()
    css_hash = base64.b64encode(hashlib.sha256(login_css.encode()).digest()).decode()
    routes = [
        Route("/healthz", auth.healthz, methods=["GET"]),
        Route("/login", auth.login, methods=["GET", "POST"]),
        page("/logout", auth.logout, methods=("POST",), role=REVIEWER),
        *files.routes(),
        *page_routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(auth.Guard, sessions=sessions, load_user=users.get,
                               extra_style_hashes=(css_hash,))],
        exception_handlers={PageError: _page_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.state.services = services
    app.state.users = users
    app.state.sessions = sessions
    app.state.login_throttle = login_throttle or auth.LoginThrottle()
    app.state.login_css = Markup(login_css)
    return app


async def _page_error(request: Request, exc: PageError) -> Response:
    return error_response(request, exc.status_code, exc.title, exc.message)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    titles = {404: "Not found", 405: "Method not allowed"}
    message = {404: "There is no page here: use the navigation above.",
               405: "This address does not take that method."}.get(exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, titles.get(exc.status_code, "Error"), message)


async def _server_error(request: Request, exc: Exception) -> Response:
    # Runs outside the middleware (Starlette's outermost layer), so it adds the headers itself.
    log.error("dashboard: %s %s failed", request.method, request.url.path, exc_info=exc)
    response = PlainTextResponse("Internal error: the server log has the details.", status_code=500)
    response.raw_headers.extend(auth.security_headers("text/plain"))
    return response
