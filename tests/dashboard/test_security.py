"""The dashboard's security, checked against every route the app has: a route added later is
covered without anyone remembering to add it here."""

from __future__ import annotations

import http.client
import re
import time
import uuid

import cv2
import numpy as np
import pytest
from starlette.routing import Route

from cloud_selector.dashboard import files
from cloud_selector.dashboard.auth import PUBLIC_PATHS, LoginThrottle, safe_next
from cloud_selector.dashboard.web import ADMIN, LABELER, REVIEWER, PageRoute, role_rank
from dashboard.conftest import PASSWORDS, csrf_of, login, make_app

UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
SECRETS = (b"SQLite format 3", b"root:x:0:0", b"PRIVATE KEY", b"[project]")


def concrete(route: Route, world) -> str:
    """The route's path with every parameter filled by a value that exists in the seeded world."""
    values = {"candidate_id": world.info.candidate_ids[0], "version": "2", "run_id": str(world.info.run_id),
              "rollout_id": world.info.rollout_id, "path": "app.js"}

    def fill(match: re.Match) -> str:
        name = match.group(1).split(":")[0]
        return values.get(name, "x")

    return re.sub(r"\{([^}]+)\}", fill, route.path)


def app_routes(app) -> list[Route]:
    routes = [r for r in app.routes if isinstance(r, Route)]
    assert len(routes) == len(app.routes), "a Mount or other router appeared: teach these tests to walk into it"
    assert len(routes) > 10
    return routes


def requests_of(app, world):
    """(method, path, route) for every method of every route."""
    for route in app_routes(app):
        for method in sorted(route.methods - {"HEAD"}):
            yield method, concrete(route, world), route


def test_every_route_but_login_and_healthz_states_a_role(app):
    for route in app_routes(app):
        if route.path in PUBLIC_PATHS:
            continue
        assert isinstance(route, PageRoute) and route.role in (REVIEWER, LABELER, ADMIN), route.path


def test_every_route_needs_a_login(app, world, client_for):
    client = client_for()
    for method, path, route in requests_of(app, world):
        if route.path in PUBLIC_PATHS:
            continue
        response = client.request(method, path, follow_redirects=False)
        if method == "GET" and not path.startswith(("/api/", "/images/", "/static/")):
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"] == "/login?next=" + path.replace("/", "%2F"), path
        else:
            assert response.status_code == 401, (method, path, response.status_code)
        json_response = client.request(method, path, headers={"accept": "application/json"}, follow_redirects=False)
        assert json_response.status_code == 401, (method, path)


def test_public_routes_answer_without_a_login(client_for):
    client = client_for()
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/login")
    assert page.status_code == 200 and 'name="password"' in page.text


def test_state_changing_requests_need_the_csrf_token(app, world, client_for):
    client = client_for("ada")
    token = csrf_of(client.get("/").text)
    unsafe = [(m, p) for m, p, _ in requests_of(app, world) if m in UNSAFE]
    assert ("POST", "/models/2/promote") in unsafe and ("POST", "/logout") in unsafe
    for method, path in unsafe:
        for kwargs in ({}, {"data": {"channel": "default"}}, {"data": {"csrf_token": "forged"}},
                       {"headers": {"x-csrf-token": "forged"}}, {"json": {"csrf_token": token}}):
            response = client.request(method, path, follow_redirects=False, **kwargs)
            assert response.status_code == 403, (method, path, kwargs, response.status_code)
    # With the token the same requests get through (a confirmation page, nothing changed yet).
    response = client.post("/models/2/promote", data={"csrf_token": token, "channel": "default"})
    assert response.status_code == 200 and "Release v2 to channel default?" in response.text
    response = client.post("/models/2/promote", headers={"x-csrf-token": token}, data={"channel": "default"})
    assert response.status_code == 200 and "Release v2 to channel default?" in response.text
    from cloud_selector.releases import Releases

    assert Releases(world.services.catalog).channel_version("default") == 1


def test_the_login_form_needs_the_csrf_token_too(client_for):
    client = client_for()
    client.get("/login")
    response = client.post("/login", data={"username": "ada", "password": PASSWORDS["ada"]}, follow_redirects=False)
    assert response.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 303  # still logged out


TRAVERSAL = [
    "../catalog.sqlite", "../../catalog.sqlite", "../../../../../../etc/passwd", "..%2f..%2fcatalog.sqlite",
    "%2e%2e/%2e%2e/catalog.sqlite", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%252e%252e%252fetc%252fpasswd",
    "..%252f..%252fcatalog.sqlite", "..\\..\\catalog.sqlite", "..%5c..%5ccatalog.sqlite", "/etc/passwd",
    "%2fetc%2fpasswd", "//etc/passwd", "app.js%00.png", "app.js\x00", "%00", "....//....//etc/passwd",
    "..;/..;/etc/passwd", ".%2e/.%2e/etc/passwd", "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", ".", "..", "./app.js/..",
    "C:\\Windows\\win.ini", "file:///etc/passwd", "../keys/signing_key.pem", "../../pyproject.toml",
]


def file_route_prefixes(app) -> list[str]:
    """The routes that send file contents; no other route may take a path parameter."""
    prefixes = [r.path.split("{")[0] for r in files.routes()]
    for route in app_routes(app):
        if ":path}" in route.path:
            assert route.path.split("{")[0] in prefixes, f"{route.path} serves paths: add it to this corpus test"
    return prefixes


def test_path_traversal_is_refused_on_every_file_route(app, world, live, client_for):
    prefixes = file_route_prefixes(app)
    assert prefixes == ["/static/", "/images/"]
    client = client_for("ada")
    login_response = login(client, "ada")
    cookie = login_response.headers["set-cookie"].split(";")[0]
    host, port = live.removeprefix("http://").split(":")
    # http.client sends the path as written: no client-side normalisation of ../ or %2e.
    for prefix in prefixes:
        for attack in TRAVERSAL:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            target = prefix + attack.replace("\x00", "%00")
            connection.putrequest("GET", target, skip_accept_encoding=True)
            connection.putheader("Cookie", cookie)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
            connection.close()
            assert response.status in (400, 404), (target, response.status)
            assert not any(secret in body for secret in SECRETS), target
    # Control: the same connection setup does serve real files.
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/static/app.js", headers={"Cookie": cookie})
    response = connection.getresponse()
    assert response.status == 200 and b"csrfFetch" in response.read()


def test_images_are_served_by_candidate_id_only(world, client_for):
    client = client_for("rey")
    cid = world.info.candidate_ids[0]
    full = client.get(f"/images/{cid}")
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(full.content, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (56, 56)
    thumb = client.get(f"/images/{cid}?size=32")
    assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (32, 32)
    big = client.get(f"/images/{cid}?size=200")
    assert cv2.imdecode(np.frombuffer(big.content, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (200, 200)
    for size in ("31", "513", "-1", "abc", "1e3", ""):
        assert client.get(f"/images/{cid}?size={size}").status_code == 400, size
    assert client.get(f"/images/{uuid.uuid4()}").status_code == 404
    assert client.get(f"/images/{cid.upper()}").status_code == 200  # UUIDs are case-insensitive
    for other_spelling in (cid.replace("-", ""), f"urn:uuid:{cid}", "%7B" + cid + "%7D"):
        assert client.get(f"/images/{other_spelling}").status_code == 404, other_spelling
    assert client.get("/images/candidates%2F00%2Fx.jpg").status_code == 404


def test_roles_are_enforced_on_every_route(app, world, client_for):
    clients = {name: client_for(name) for name in ("rey", "lou", "ada")}
    tokens = {name: csrf_of(c.get("/").text) for name, c in clients.items()}
    role_of = {"rey": REVIEWER, "lou": LABELER, "ada": ADMIN}
    checked = 0
    for method, path, route in requests_of(app, world):
        if route.path in PUBLIC_PATHS or path == "/logout":
            continue
        for name, client in clients.items():
            response = client.request(method, path, headers={"x-csrf-token": tokens[name]}, follow_redirects=False)
            allowed = role_rank(role_of[name]) >= role_rank(route.role)
            if allowed:
                assert response.status_code != 403, (name, method, path)
            else:
                assert response.status_code == 403, (name, method, path, response.status_code)
                checked += 1
    assert checked >= 10


def test_a_reviewer_sees_no_admin_controls(client_for):
    page = client_for("rey").get("/models/2").text
    assert "/models/2/promote" not in page and "Start rollout" not in page
    assert "/runs/new" not in client_for("rey").get("/runs").text
    assert "/models/2/promote" in client_for("ada").get("/models/2").text


def test_security_headers_on_every_kind_of_response(world, client_for):
    anonymous, reviewer = client_for(), client_for("rey")
    cid = world.info.candidate_ids[0]
    responses = {
        "login": anonymous.get("/login"), "healthz": anonymous.get("/healthz"),
        "redirect": anonymous.get("/models", follow_redirects=False), "401": anonymous.get("/static/app.js"),
        "page": reviewer.get("/models"), "static": reviewer.get("/static/app.js"), "image": reviewer.get(f"/images/{cid}"),
        "404": reviewer.get("/no/such/page"), "403": reviewer.get("/runs/new"),
        "csrf": reviewer.post("/logout", follow_redirects=False),
    }
    for what, response in responses.items():
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "img-src 'self' data: blob:" in csp, what
        script_src = re.search(r"script-src ([^;]*)", csp).group(1)
        assert script_src.strip() == "'self'", what
        assert "frame-ancestors 'none'" in csp, what
        assert response.headers["x-content-type-options"] == "nosniff", what
        assert response.headers["x-frame-options"] == "DENY", what
        assert response.headers["referrer-policy"] == "same-origin", what
        if response.headers.get("content-type", "").startswith("text/html"):
            assert response.headers["cache-control"] == "no-store", what
    assert responses["404"].status_code == 404 and responses["403"].status_code == 403


def test_no_inline_script_in_any_page(client_for):
    client = client_for("ada")
    for path in ("/", "/models", "/models/2", "/models/1", "/runs", "/runs/new", "/fleet", "/login"):
        html = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert not re.search(r"\son[a-z]+\s*=", html), path
        assert not re.search(r"\sstyle\s*=", html), path  # style-src has no 'unsafe-inline'


def test_session_cookie_attributes(client_for):
    response = login(client_for(), "rey")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-efw_session=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/", "Max-Age=43200"):
        assert attribute in cookie, attribute


def test_sessions_end_when_the_user_is_disabled_or_the_password_changes(world, client_for):
    from cloud_selector.users import UserStore

    store = UserStore(world.services.catalog)
    labeler, reviewer, admin = client_for("lou"), client_for("rey"), client_for("ada")
    assert labeler.get("/models").status_code == 200 and reviewer.get("/models").status_code == 200
    store.disable("lou")
    assert labeler.get("/models", follow_redirects=False).status_code == 303
    store.set_password("rey", "a-brand-new-password")
    assert reviewer.get("/models", follow_redirects=False).status_code == 303
    login(reviewer, "rey", "a-brand-new-password")
    assert reviewer.get("/models").status_code == 200
    # A role change applies at the next request, without logging in again.
    assert admin.get("/runs/new").status_code == 200
    store.set_role("ada", "reviewer")
    assert admin.get("/runs/new").status_code == 403


def test_a_tampered_or_expired_session_is_no_session(world, client_for):
    name = "__Host-efw_session"
    value = client_for("rey").cookies.get(name)
    for forged in (value[:-2] + ("AA" if not value.endswith("AA") else "BB"), value.replace(".", ".x", 1), "e30"):
        client = client_for()
        client.cookies.set(name, forged)
        assert client.get("/models", follow_redirects=False).status_code == 303, forged
    untouched = client_for()
    untouched.cookies.set(name, value)
    assert untouched.get("/models").status_code == 200
    short = client_for(application=make_app(world, session_max_age_s=1))
    login(short, "rey")
    assert short.get("/models").status_code == 200
    time.sleep(2.1)
    assert short.get("/models", follow_redirects=False).status_code == 303


def test_logout_ends_the_session(client_for):
    client = client_for("rey")
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/models", follow_redirects=False).status_code == 303


def test_login_lockout_and_generic_errors(world, client_for):
    now = [1000.0]
    app = make_app(world, login_throttle=LoginThrottle(max_failures=5, lockout_s=30, clock=lambda: now[0]))
    client = client_for(application=app)

    def attempt(name: str, password: str):
        token = csrf_of(client.get("/login").text)
        return client.post("/login", data={"username": name, "password": password, "csrf_token": token},
                           follow_redirects=False)

    wrong, unknown = attempt("ada", "not-the-password"), attempt("nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    message = re.search(r'role="alert">([^<]+)<', wrong.text).group(1)
    assert message == re.search(r'role="alert">([^<]+)<', unknown.text).group(1) == "Wrong user name or password."
    for _ in range(4):
        attempt("ada", "still-wrong-password")
    locked = attempt("ada", PASSWORDS["ada"])  # the right password, but locked out
    assert locked.status_code == 429 and "wait 30 s" in locked.text
    assert attempt("rey", PASSWORDS["rey"]).status_code == 303  # another name is not locked
    now[0] += 31
    assert attempt("ada", PASSWORDS["ada"]).status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "\\\\evil.example",
                                    "javascript:alert(1)", "http:/evil.example", "/\t/evil.example", "", "models",
                                    "/%0d%0aLocation:%20https://evil.example".replace("%0d%0a", "\r\n")])
def test_open_redirects_are_refused(target, client_for):
    assert safe_next(target) == "/"
    client = client_for()
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"username": "rey", "password": PASSWORDS["rey"], "csrf_token": token,
                                           "next": target}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_next_keeps_a_local_path(client_for):
    assert safe_next("/models/2?tab=gate") == "/models/2?tab=gate"
    client = client_for()
    redirect = client.get("/runs/1?x=1", follow_redirects=False).headers["location"]
    assert redirect == "/login?next=%2Fruns%2F1%3Fx%3D1"
    assert login(client, "rey", next_path="/runs/1?x=1").headers["location"] == "/runs/1?x=1"


def test_oversized_requests_are_refused_before_any_route(client_for):
    from cloud_selector.dashboard.auth import MAX_BODY_BYTES

    client = client_for("ada")
    token = csrf_of(client.get("/").text)
    response = client.post("/runs/new", headers={"x-csrf-token": token}, content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413 and "larger than 8 MiB" in response.text
    form = client.post("/runs/new", data={"csrf_token": token, "config": "x" * MAX_BODY_BYTES})
    assert form.status_code == 413
