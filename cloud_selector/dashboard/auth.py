"""Login, sessions, CSRF, login throttling and security headers: everything a request passes
through before any route.

Sessions are signed cookies (itsdangerous, HMAC-SHA256 with the dashboard secret), nothing on
the server: {user, fingerprint, csrf}. The fingerprint is an HMAC of the user's password hash,
so changing a password or disabling the user ends every session at its next request; the role
is read from the catalog at every request, so a role change applies at once. Cookies are
HttpOnly, SameSite=Strict, Secure (named __Host-… then), and expire after `max_age_s`. Logging
out replaces the cookie; a copied cookie stays valid until it expires or the password changes.

Every request gets a session: anonymous ones carry only a CSRF token (the login form needs one).
Every POST/PUT/PATCH/DELETE must carry the session's token in the X-CSRF-Token header or a
csrf_token form field (compared in constant time), or it is refused with 403 before any route.

Failed logins are counted per (user name, client address): `max_failures` in a row lock that
pair out for `lockout_s` (behind a proxy every client has the proxy's address: the lockout then
covers the user name from everywhere, which is the safer side).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_selector.dashboard.web import SAFE_METHODS, wants_json

DEFAULT_MAX_AGE_S = 12 * 3600
MAX_BODY_BYTES = 8 * 1024 * 1024  # a POST's body, read whole before any route
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
PUBLIC_PATHS = frozenset({"/login", "/healthz"})



def content_security_policy(style_hashes: tuple[str, ...] = ()) -> str:
    """No inline script at all (JavaScript lives in static/), inline styles only by hash."""
    styles = " ".join(["'self'", *(f"'sha256-{h}'" for h in style_hashes)])
    return (f"default-src 'self'; script-src 'self'; style-src {styles}; img-src 'self' data: blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def security_headers(content_type: str = "", csp: str | None = None) -> list[tuple[bytes, bytes]]:
    """The headers every response carries; HTML (and JSON) is never cached."""
    headers = [(b"content-security-policy", (csp or content_security_policy()).encode()),
               (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"same-origin"), (b"cross-origin-opener-policy", b"same-origin")]
    if content_type.startswith(("text/html", "application/json")) or not content_type:
        headers.append((b"cache-control", b"no-store"))
    return headers


def safe_next(value: str | None) -> str:
    """`value` if it is a path on this site, else "/": never a redirect to another origin
    (//host, /\\host, scheme:, control characters)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def is_disabled(user) -> bool:
    return bool(getattr(user, "disabled", False) or getattr(user, "disabled_ms", None))


@dataclass(frozen=True)
class Session:
    csrf: str
    user: str = ""  # "" = anonymous
    fingerprint: str = ""


class Sessions:
    """Signs and reads session and flash cookies."""

    def __init__(self, secret: bytes, *, max_age_s: int = DEFAULT_MAX_AGE_S, secure: bool = True):
        if len(secret) < 32:
            raise ValueError("the dashboard secret must be at least 32 bytes")
        self._secret = secret
        self._sessions = URLSafeTimedSerializer(secret, salt="edgeflywheel.dashboard.session")
        self._flash = URLSafeSerializer(secret, salt="edgeflywheel.dashboard.flash")
        self.max_age_s = max_age_s
        self.secure = secure
        # __Host- cookies must be Secure, for path / and without a domain: no subdomain can set them.
        self.cookie_name = "__Host-efw_session" if secure else "efw_session"
        self.flash_name = "__Host-efw_flash" if secure else "efw_flash"

    def fingerprint(self, password_hash: str) -> str:
        return hmac.new(self._secret, b"password-hash\0" + password_hash.encode(), hashlib.sha256).hexdigest()[:32]

    def new(self, user=None) -> Session:
        if user is None:
            return Session(csrf=secrets.token_urlsafe(32))
        return Session(csrf=secrets.token_urlsafe(32), user=user.name, fingerprint=self.fingerprint(user.password_hash))

    def load(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=self.max_age_s)
            return Session(csrf=str(data["c"]), user=str(data.get("u", "")), fingerprint=str(data.get("f", "")))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None

    def matches(self, session: Session, user) -> bool:
        """The user still exists, is enabled, and has the password the session was made with."""
        return (user is not None and not is_disabled(user) and
                hmac.compare_digest(session.fingerprint, self.fingerprint(user.password_hash)))

    def set_cookie_header(self, session: Session) -> bytes:
        value = self._sessions.dumps({"c": session.csrf, "u": session.user, "f": session.fingerprint})
        return self._cookie(self.cookie_name, value, self.max_age_s)

    def _cookie(self, name: str, value: str, max_age: int) -> bytes:
        attributes = f"{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        return (attributes + ("; Secure" if self.secure else "")).encode("latin-1")

    # flash: a one-time message a redirect carries to the next page
    def set_flash(self, response: Response, message: str, kind: str) -> None:
        response.raw_headers.append((b"set-cookie", self._cookie(self.flash_name, self._flash.dumps([kind, message]), 60)))

    def read_flash(self, request: Request) -> dict | None:
        raw = request.cookies.get(self.flash_name)
        try:
            kind, message = self._flash.loads(raw) if raw else (None, None)
        except (BadSignature, TypeError, ValueError):
            return None
        return {"kind": str(kind), "message": str(message)} if message else None

    def clear_flash(self, response: Response) -> None:
        response.raw_headers.append((b"set-cookie", self._cookie(self.flash_name, "", 0)))


class LoginThrottle:
    """`max_failures` failed logins in a row for one key lock it for `lockout_s`."""

    def __init__(self, *, max_failures: int = 5, lockout_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000):
        self.max_failures, self.lockout_s, self._clock, self._max_keys = max_failures, lockout_s, clock, max_keys
        self._state: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (failures, locked until)
        self._lock = threading.Lock()

    def locked_for(self, key: tuple[str, str]) -> float:
        """Seconds until `key` may try again (0 = now)."""
        with self._lock:
            _, until = self._state.get(key, (0, 0.0))
        return max(0.0, until - self._clock())

    def failed(self, key: tuple[str, str]) -> None:
        now = self._clock()
        with self._lock:
            failures, until = self._state.get(key, (0, 0.0))
            if until and until <= now:
                failures = 0  # the lockout passed: a fresh count
            failures += 1
            self._state[key] = (failures, now + self.lockout_s if failures >= self.max_failures else 0.0)
            if len(self._state) > self._max_keys:  # forget keys that are not locked
                self._state = {k: v for k, v in self._state.items() if v[1] > now}

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._state.pop(key, None)


class Guard:
    """ASGI middleware in front of every route: session, login, CSRF, security headers.

    `load_user(name)` returns the stored user (with .name, .role, .password_hash, .disabled) or None."""

    def __init__(self, app: ASGIApp, *, sessions: Sessions, load_user: Callable[[str], object],
                 public_paths: frozenset[str] = PUBLIC_PATHS, extra_style_hashes: tuple[str, ...] = ()):
        self.app, self.sessions, self.load_user, self.public_paths = app, sessions, load_user, public_paths
        self.csp = content_security_policy(extra_style_hashes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        session = self.sessions.load(request.cookies.get(self.sessions.cookie_name))
        user = None
        if session is not None and session.user:
            user = await run_in_threadpool(self.load_user, session.user)
            if not self.sessions.matches(session, user):
                session, user = None, None  # disabled, password changed, or deleted: log out
        fresh = session is None
        if fresh:
            session = self.sessions.new()
        scope.setdefault("state", {}).update(session=session, user=user)
        send = self._decorate(send, self.sessions.set_cookie_header(session) if fresh else None)
        if user is None and scope["path"] not in self.public_paths:
            await self._unauthenticated(scope, send)
            return
        if scope["method"] not in SAFE_METHODS:
            # Read whole (bounded) here, so the token can come from a form field, then replayed.
            body = await _read_body(receive)
            if body is None:
                await _refuse(scope, send, 413, f"the request is larger than {MAX_BODY_BYTES // 2**20} MiB")
                return
            receive = _replay(body, receive)
            token = await _csrf_token(scope, body)
            if token is None or not hmac.compare_digest(token.encode(), session.csrf.encode()):
                await _refuse(scope, send, 403, "the form expired or the CSRF token is missing: reload the page "
                                                "and try again")
                return
        await self.app(scope, receive, send)

    def _decorate(self, send: Send, cookie: bytes | None) -> Send:
        async def decorated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                content_type = dict(headers).get(b"content-type", b"").decode("latin-1")
                headers += [h for h in security_headers(content_type, self.csp) if h[0] not in names]
                session_set = any(k.lower() == b"set-cookie" and v.startswith(self.sessions.cookie_name.encode() + b"=")
                                  for k, v in headers)
                if cookie is not None and not session_set:
                    headers.append((b"set-cookie", cookie))
                message = {**message, "headers": headers}
            await send(message)

        return decorated

    async def _unauthenticated(self, scope: Scope, send: Send) -> None:
        if scope["method"] in ("GET", "HEAD") and not wants_json(scope) and \
                not scope["path"].startswith(("/images/", "/static/")):
            query = scope.get("query_string", b"").decode("latin-1")
            target = safe_next(scope["path"] + (f"?{query}" if query else ""))
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", f"/login?next={quote(target, safe='')}".encode()),
                                    (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await _refuse(scope, send, 401, "log in first: /login")


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when it is larger than MAX_BODY_BYTES."""
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


async def _csrf_token(scope: Scope, body: bytes) -> str | None:
    """The request's CSRF token: the X-CSRF-Token header, else the csrf_token form field."""
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    if CSRF_HEADER.encode() in headers:
        return headers[CSRF_HEADER.encode()].decode("latin-1")
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return None
    form = await Request(scope, _replay(body, _never)).form()
    try:
        token = form.get(CSRF_FIELD)
    finally:
        await form.close()
    return token if isinstance(token, str) else None


async def _never() -> Message:
    return {"type": "http.disconnect"}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect

    return replay


async def _refuse(scope: Scope, send: Send, status: int, text: str) -> None:
    """An error before any route: {"error": text} for API requests, else the sentence as text."""
    if wants_json(scope):
        await _send(send, status, json.dumps({"error": text}).encode(), b"application/json")
    else:
        await _send(send, status, (text[0].upper() + text[1:] + ".").encode(), b"text/plain; charset=utf-8")


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def client_key(request: Request, name: str) -> tuple[str, str]:
    return name.strip().lower(), request.client.host if request.client else "?"


# ------------------------------------------------------------------ the login and logout routes


async def login(request: Request) -> Response:
    """GET: the form. POST: check the password (throttled); on success a new session (a new CSRF
    token too) and a redirect to `next`, a local path."""
    from cloud_selector.dashboard.web import current_user, render

    state = request.app.state
    if request.method == "GET":
        target = safe_next(request.query_params.get("next"))
        if current_user(request) is not None:
            return RedirectResponse(target, status_code=303)
        return render(request, "login.html", {"next": target, "error": "", "username": ""})
    form = await request.form()
    name, password = str(form.get("username", "")).strip()[:64], str(form.get("password", ""))[:1024]
    target = safe_next(str(form.get("next", "")))
    key = client_key(request, name)
    wait = state.login_throttle.locked_for(key)
    user = None
    if not wait and name and password:
        user = await run_in_threadpool(state.users.authenticate, name, password)
        if user is not None and is_disabled(user):
            user = None
    if user is None:
        if not wait:
            state.login_throttle.failed(key)
            wait = state.login_throttle.locked_for(key)
        error = (f"Too many failed attempts: wait {math.ceil(wait)} s and try again." if wait
                 else "Wrong user name or password.")
        return render(request, "login.html", {"next": target, "error": error, "username": name},
                      status_code=429 if wait else 401)
    state.login_throttle.succeeded(key)
    response = RedirectResponse(target, status_code=303)
    response.raw_headers.append((b"set-cookie", state.sessions.set_cookie_header(state.sessions.new(user))))
    return response


def logout(request: Request) -> Response:
    """Replace the session with an anonymous one and go to the login page."""
    response = RedirectResponse("/login", status_code=303)
    sessions = request.app.state.sessions
    response.raw_headers.append((b"set-cookie", sessions.set_cookie_header(sessions.new())))
    return response


def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})
