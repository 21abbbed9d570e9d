// The embedding map: fetches /api/map?color=...&method=..., colours the points, shows a thumbnail
// on hover, selects with lasso or box (static/scatter.js draws) and queues the selection for
// labeling with csrfFetch. window.reviewMap exposes the state for tests and the console.
"use strict";

(function () {
  const wrap = document.getElementById("rv-map");
  if (!wrap || !window.Scatter) return;
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#17becf", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                   "#e377c2", "#7f7f7f", "#bcbd22", "#aec7e8"];
  const STATE_COLOURS = { pooled: "#8da0cb", duplicate: "#f4a6a6", selected: "#f28e2b", in_labeling: "#edc948",
                          labeled: "#59a14f", skipped: "#bab0ac", rejected: "#d62728" };
  const NONE = "#c4c8d0";
  const NONE_NAMES = new Set(["unknown", "unlabeled", "?"]);
  const RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];  // viridis, low to high
  const tip = document.getElementById("rv-map-tip");
  const status = document.getElementById("rv-map-status");
  const legend = document.getElementById("rv-map-legend");
  const colorSelect = document.getElementById("rv-map-color");
  const methodSelect = document.getElementById("rv-map-method");
  const queueButton = document.getElementById("rv-map-queue");
  const selectedLabel = document.getElementById("rv-map-selected");
  let data = null;
  let loading = null;

  const hex = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
  const say = (text, isError) => { status.textContent = text; status.classList.toggle("error", Boolean(isError)); };

  function ramp(t) {
    const s = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
    const i = Math.min(Math.floor(s), RAMP.length - 2);
    const [a, b] = [hex(RAMP[i]), hex(RAMP[i + 1])];
    return a.map((v, k) => Math.round(v + (b[k] - v) * (s - i)));
  }

  function categoryColour(color, name, index) {
    if (NONE_NAMES.has(name)) return NONE;
    if (color.by === "state" && STATE_COLOURS[name]) return STATE_COLOURS[name];
    return PALETTE[index % PALETTE.length];
  }

  function colours(color) {
    const n = color.values.length;
    const rgba = new Uint8Array(n * 4);
    const alpha = n > 30000 ? 190 : 235;
    const table = color.kind === "category" ? color.categories.map((name, i) => hex(categoryColour(color, name, i))) : null;
    const span = color.max - color.min || 1;
    for (let i = 0; i < n; i += 1) {
      const v = color.values[i];
      const rgb = table ? table[v] : v === null ? hex(NONE) : ramp((v - color.min) / span);
      rgba.set(rgb, 4 * i);
      rgba[4 * i + 3] = alpha;
    }
    return rgba;
  }

  function swatch(css) {
    const s = document.createElement("span");
    s.className = "rv-swatch";
    s.style.background = css;
    return s;
  }

  function drawLegend(color) {
    legend.replaceChildren();
    if (color.kind === "category") {
      const counts = new Array(color.categories.length).fill(0);
      color.values.forEach((v) => { counts[v] += 1; });
      color.categories.forEach((name, i) => {
        const item = document.createElement("span");
        item.append(swatch(categoryColour(color, name, i)), `${name} (${counts[i].toLocaleString("en")})`);
        legend.append(item);
      });
    } else {
      const bar = document.createElement("span");
      bar.className = "rv-ramp";
      bar.style.background = `linear-gradient(to right, ${RAMP.join(", ")})`;
      const none = document.createElement("span");
      none.append(swatch(NONE), "unknown");
      legend.append(`${color.by} ${color.min.toFixed(3)} `, bar, ` ${color.max.toFixed(3)}`, none);
    }
  }

  function valueText(i) {
    const c = data.color;
    const v = c.values[i];
    return c.kind === "category" ? c.categories[v] : v === null ? "unknown" : v.toFixed(3);
  }

  const scatter = new window.Scatter(wrap, {
    onHover(i, sx, sy) {
      if (i < 0 || !data) { tip.hidden = true; return; }
      const id = data.ids[i];
      const img = document.createElement("img");
      img.src = `/images/${id}?size=96`;
      img.alt = "";
      const text = document.createElement("div");
      text.textContent = `${id.slice(0, 8)} · ${data.color.by}: ${valueText(i)}`;
      tip.replaceChildren(img, text);
      tip.hidden = false;
      tip.style.left = `${Math.min(sx + 14, wrap.clientWidth - 130)}px`;
      tip.style.top = `${Math.min(sy + 14, wrap.clientHeight - 130)}px`;
    },
    onSelect(indices) {
      selectedLabel.textContent = indices.length.toLocaleString("en");
      if (queueButton) {
        const max = Number(queueButton.dataset.max);
        queueButton.disabled = indices.length === 0 || indices.length > max;
        queueButton.textContent = indices.length > max ? `Select at most ${max.toLocaleString("en")} to queue`
          : `Queue ${indices.length.toLocaleString("en")} for labeling`;
      }
    },
    onClick(i) { if (data) window.location.href = `/candidates/${data.ids[i]}`; },
  });

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  async function load() {
    const by = colorSelect.value;
    const method = methodSelect.value;
    const same = data && data.method === method;
    say(same ? "Colouring…" : "Computing the projection…", false);
    const mine = Symbol("load");
    loading = mine;
    try {
      const query = `color=${encodeURIComponent(by)}&method=${encodeURIComponent(method)}`;
      let reply = same ? await getJSON(`/api/map?${query}&only=color`) : null;
      if (reply && (reply.count !== data.count || reply.first_id !== data.ids[0] ||
                    reply.last_id !== data.ids[data.count - 1])) reply = null;  // the pool changed
      if (loading !== mine) return;
      if (reply) {
        data.color = reply.color;
        const keep = scatter.selectedIndices();
        scatter.setColors(colours(data.color));
        scatter.setSelection(keep);
      } else {
        data = await getJSON(`/api/map?${query}`);
        if (loading !== mine) return;
        scatter.setData(Float32Array.from(data.x), Float32Array.from(data.y), colours(data.color));
        scatter.setSelection([]);
      }
      drawLegend(data.color);
      const sample = data.total > data.count ? ` (a uniform sample of ${data.total.toLocaleString("en")})` : "";
      say(data.count ? `${data.count.toLocaleString("en")} points of model v${data.model_version}${sample}, ` +
                       `${data.method.toUpperCase()}; drawn with ${scatter.renderer === "webgl" ? "WebGL" : "Canvas2D"}.`
                     : "No candidate has an embedding yet: the map fills as devices upload.", false);
      wrap.dataset.ready = "true";
    } catch (error) {
      say(`The map could not be loaded: ${error.message}`, true);
    }
  }

  async function queueSelection() {
    const ids = scatter.selectedIndices().map((i) => data.ids[i]);
    if (!ids.length) return;
    queueButton.disabled = true;
    try {
      const reply = await (await csrfFetch("/api/candidates/queue", { method: "POST", body: { ids } })).json();
      scatter.setSelection([]);
      await load();
      say(reply.message, false);
    } catch (error) {
      say(`Nothing was queued: ${error.message}`, true);
      queueButton.disabled = false;
    }
  }

  document.querySelectorAll(".rv-modes button").forEach((button) => {
    button.addEventListener("click", () => {
      document.querySelectorAll(".rv-modes button").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      scatter.setMode(button.dataset.mode);
    });
  });
  document.getElementById("rv-map-reset").addEventListener("click", () => scatter.resetView());
  document.getElementById("rv-map-clear").addEventListener("click", () => scatter.setSelection([]));
  colorSelect.addEventListener("change", load);
  methodSelect.addEventListener("change", () => { data = null; load(); });
  if (queueButton) queueButton.addEventListener("click", queueSelection);

  window.reviewMap = {
    scatter,
    selectedIds: () => scatter.selectedIndices().map((i) => data.ids[i]),
    positions: () => (data ? data.ids.map((id, i) => [id, ...scatter.screenPosition(i)]) : []),
  };
  load();
}());
