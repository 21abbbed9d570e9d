// The dashboard's shared JavaScript. No inline scripts anywhere (the Content-Security-Policy
// forbids them): a page adds its own file with {% block scripts %}<script src="/static/x.js"
// defer></script>{% endblock %}.
"use strict";

/** The session's CSRF token, from <meta name="csrf-token"> in base.html. */
function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute("content") : "";
}

/**
 * fetch() for this dashboard: sends the CSRF token (every POST/PUT/PATCH/DELETE needs it), the
 * session cookie, and asks for JSON. Rejects with an Error carrying the server's message when
 * the response is not ok.
 */
async function csrfFetch(url, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("X-CSRF-Token", csrfToken());
  if (!headers.has("Accept")) headers.set("Accept", "application/json");
  let body = options.body;
  if (body !== undefined && body !== null && !(body instanceof FormData) && typeof body !== "string") {
    body = JSON.stringify(body);
    headers.set("Content-Type", "application/json");
  }
  const response = await fetch(url, { credentials: "same-origin", ...options, headers, body });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const data = await response.clone().json();
      if (data && data.error) message = data.error;
    } catch (_) { /* not JSON: keep the status line */ }
    const error = new Error(message);
    error.response = response;
    throw error;
  }
  return response;
}

window.csrfToken = csrfToken;
window.csrfFetch = csrfFetch;

// Small conveniences wired by data attributes, so templates stay free of script.
document.addEventListener("DOMContentLoaded", () => {
  // <button data-format-json="ID">: pretty-print the JSON in textarea#ID, or say what is wrong.
  document.querySelectorAll("[data-format-json]").forEach((button) => {
    button.addEventListener("click", () => {
      const area = document.getElementById(button.dataset.formatJson);
      const note = document.getElementById(button.dataset.formatJson + "-note");
      try {
        area.value = JSON.stringify(JSON.parse(area.value), null, 2);
        if (note) note.textContent = "";
      } catch (error) {
        if (note) note.textContent = `Not valid JSON yet: ${error.message}`;
      }
    });
  });
  // <form data-disable-on-submit>: one submission only (a selection run takes a while).
  document.querySelectorAll("form[data-disable-on-submit]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      // After this tick, so the clicked button's name=value is still part of the submission.
      setTimeout(() => {
        form.querySelectorAll("button[type=submit]").forEach((b) => { b.disabled = true; });
        if (event.submitter) event.submitter.textContent = "Working…";
      }, 0);
    });
  });
});
