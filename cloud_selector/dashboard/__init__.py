"""The cloud dashboard: server-rendered pages (Starlette + Jinja2, a little plain JavaScript)
over the cloud's Services. Importing this package does nothing; `app.create_app(services,
secret_key=...)` builds the application and `server.DashboardServer` serves it from a thread of
`cloud-selector serve --dashboard-address HOST:PORT`.

Modules
-------
app.py      create_app: routes, the security middleware, error pages
web.py      THE CONTRACT FOR PAGES (below): page(), render(), roles, errors, confirmation
auth.py     sessions (signed cookies), login/logout, CSRF, login throttling, security headers
files.py    /static/{path} and /images/{candidate_id} (the only routes that send file contents)
charts.py   small inline SVG charts drawn on the server
server.py   uvicorn in a thread, and the session secret (env or DATA_DIR/keys/dashboard_secret)
pages/      one module per page; every module here is picked up

Adding a page
-------------
Create `cloud_selector/dashboard/pages/NAME.py` with `routes() -> list[Route]`, each route made
with `web.page` (a plain Route is refused at start-up: every route must state its role)::

    from cloud_selector.dashboard.web import LABELER, form, page, redirect, render, services

    def grid(request):                                  # plain def: runs in a worker thread
        rows = dashboard_data.candidate_page(services(request).catalog, ...)
        return render(request, "candidates.html", {"rows": rows})

    def reject(request):                                # a POST; CSRF was checked before it ran
        ids = form(request).getlist("id")               # or json_body(request) for csrfFetch JSON
        ...
        return redirect(request, "/candidates", f"{len(ids)} rejected")   # 303 + a one-time message

    def routes():
        return [page("/candidates", grid, nav="Candidates"),
                page("/candidates/reject", reject, methods=("POST",), role=LABELER),
                page("/api/candidates", api_list)]      # under /api/: JSON errors, 401 not a redirect

- `page(path, endpoint, *, methods=("GET",), role=REVIEWER, nav=None)`: the endpoint gets the
  Request and returns a Response; plain functions run in a thread (catalog calls block), async
  ones on the loop. `role` is the least role allowed (reviewer < labeler < admin): reviewers
  read; labelers also label, queue, reject and tag; admins also promote, roll back, pin, start
  rollouts and selection runs. `nav` puts the page in the top bar (for users with its role),
  ordered by web.NAV_ORDER (Overview, Candidates, Map, Label, Selection runs, Models, Fleet).
- `render(request, "x.html", context)` -> HTMLResponse. Templates live in templates/, extend
  base.html (blocks: title, head, content, scripts) and get `user`, `csrf_token`, `nav`,
  `active_nav`, `flash` besides the context; `{% import "_macros.html" as ui with context %}`
  gives ui.csrf_field(), ui.post_button(), ui.empty(), ui.status(), ui.stat(). Filters: when,
  ago, size, pct, num, pretty_json. Undefined names are errors (StrictUndefined).
- `services(request)` (catalog, blobs, registry), `releases(request)`, `current_user(request)`,
  `actor(request)` (the name to record), `require_role(request, role)` inside an endpoint,
  `form(request)` / `json_body(request)` for POST data, `int_param(...)` for numbers.
- Errors: raise `BadRequest`, `Forbidden`, `NotFound` or `Conflict` with a message that says
  what to do; it becomes an error page, or `{"error": ...}` JSON for API requests.
- A consequential action (promote, roll back, ...): `confirm_then(request, act, back=...,
  title=..., question=..., errors=(ReleaseError,))` shows a confirmation page first and runs
  `act()` only when it is answered (confirmed=yes).
- Images: `<img src="/images/{{ id }}?size=128">` (a thumbnail whose longer side is 32..512 px).

JavaScript and the Content-Security-Policy
------------------------------------------
No inline script, no `on*=` attributes, no `style=` attributes (CSP: script-src 'self',
style-src 'self'); set styles from JS (`el.style.x = ...` is allowed) or use CSS classes and
SVG presentation attributes. Put a page's script in static/NAME.js and load it with
`{% block scripts %}<script src="/static/NAME.js" defer></script>{% endblock %}`. static/app.js
(loaded on every page) defines `csrfFetch(url, options)`: fetch with the X-CSRF-Token header
from `<meta name="csrf-token">`, Accept: application/json, and a JSON body when `options.body`
is an object; it rejects with the server's error message. Forms POST a `csrf_token` field
(ui.csrf_field()).

Security (auth.py; tests/dashboard/test_security.py checks every route the app has)
--------------------------------------------------------------------------------
Every route needs a login except /login and /healthz: pages redirect to /login?next=PATH,
everything else gets 401. Every POST/PUT/PATCH/DELETE needs the session's CSRF token. Sessions
last 12 h and end when the user's password changes or the user is disabled. Five failed logins
for one name from one address lock it for 30 s.
"""
