// The labeling page, from the keyboard: 1-9 and 0 label with the first ten classes, Enter
// accepts the model's prediction (outlined), S skips, R rejects (with the reason typed, if any),
// U undoes the last answer of this visit. Each answer POSTs JSON to /label (csrfFetch) and the
// reply carries the next candidate and the queue's progress. One request at a time.
"use strict";

(function () {
  const root = document.getElementById("rv-label");
  if (!root) return;
  const form = document.getElementById("rv-label-form");
  const status = document.getElementById("rv-label-status");
  const undoButton = document.getElementById("rv-undo");
  const reasonInput = document.getElementById("rv-label-reason-input");
  const classButtons = Array.from(document.querySelectorAll(".rv-classes button[data-class]"));
  const undoStack = [];  // [{id, action}] answered in this visit, newest last
  let item = root.dataset.itemId ? { id: root.dataset.itemId, predicted_class: predictedFromPage() } : null;
  let busy = false;

  function predictedFromPage() {
    const button = classButtons.find((b) => b.classList.contains("rv-predicted"));
    return button ? button.dataset.class : null;
  }

  function say(message, isError) {
    status.textContent = message;
    status.classList.toggle("error", Boolean(isError));
  }

  function pct(p) { return p === null || p === undefined ? "-" : `${(100 * p).toFixed(1)}%`; }

  function when(ms) {
    const d = new Date(ms);
    return `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
  }

  function setText(id, text) { document.getElementById(id).textContent = text; }

  function bar(p) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "rv-bar");
    svg.setAttribute("viewBox", "0 0 100 8");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    [["rv-bar-bg", 100], ["rv-bar-fg", Math.round(10000 * p) / 100]].forEach(([cls, width]) => {
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("class", cls);
      rect.setAttribute("width", String(width));
      rect.setAttribute("height", "8");
      svg.appendChild(rect);
    });
    return svg;
  }

  function show(next) {
    item = next;
    root.hidden = !next;
    document.getElementById("rv-label-empty").hidden = Boolean(next);
    root.dataset.itemId = next ? next.id : "";
    if (!next) return;
    document.getElementById("rv-label-id").value = next.id;
    document.getElementById("rv-label-img").src = next.image;
    document.getElementById("rv-label-link").href = `/candidates/${next.id}`;
    setText("rv-label-short", next.id.slice(0, 8));
    setText("rv-label-device", next.device_id);
    setText("rv-label-captured", when(next.capture_time_ms));
    setText("rv-label-reason", next.reason);
    setText("rv-label-model", String(next.model_version));
    setText("rv-label-predicted", next.predicted_class || "nothing it can name");
    setText("rv-label-predicted-prob", pct(next.predicted_prob));
    const list = document.getElementById("rv-label-probs");
    list.replaceChildren(...next.probabilities.map((p) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "rv-pname";
      name.textContent = p.name;
      const value = document.createElement("span");
      value.className = "num";
      value.textContent = pct(p.p);
      li.append(name, bar(p.p), value);
      return li;
    }));
    classButtons.forEach((b) => b.classList.toggle("rv-predicted", b.dataset.class === next.predicted_class));
    reasonInput.value = "";
  }

  function showProgress(progress) {
    document.querySelector("[data-progress=done]").textContent = progress.done.toLocaleString("en");
    document.querySelector("[data-progress=remaining]").textContent = progress.remaining.toLocaleString("en");
    const meter = document.getElementById("rv-progress-bar");
    meter.max = Math.max(progress.total, 1);
    meter.value = progress.done;
  }

  async function send(body) {
    if (busy) return;
    busy = true;
    root.classList.add("rv-busy");
    try {
      const response = await csrfFetch("/label", { method: "POST", body });
      const reply = await response.json();
      if (body.action === "undo") undoStack.pop();
      else undoStack.push({ id: body.id, action: body.action });
      show(reply.item);
      showProgress(reply.progress);
      say(reply.message + (reply.item ? "" : " The queue is empty now."), false);
    } catch (error) {
      if (body.action === "undo") undoStack.pop();  // refused for good: U goes on to the one before
      say(error.message, true);
    } finally {
      busy = false;
      root.classList.remove("rv-busy");
      undoButton.disabled = undoStack.length === 0;
    }
  }

  function label(name) {
    if (!item) return;
    const button = classButtons.find((b) => b.dataset.class === name);
    if (button) button.classList.add("rv-flash");
    setTimeout(() => { if (button) button.classList.remove("rv-flash"); }, 250);
    send({ id: item.id, action: "label", label: name });
  }

  function undo() {
    const last = undoStack[undoStack.length - 1];
    if (!last) { say("Nothing to undo yet in this visit.", true); return; }
    send({ id: last.id, action: "undo" });
  }

  // Clicks on the form's buttons go through the same path as the keys.
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = event.submitter;
    if (!button || !item) return;
    if (button.name === "label") label(button.value);
    else if (button.value === "skip") send({ id: item.id, action: "skip" });
    else if (button.value === "reject") send({ id: item.id, action: "reject", reason: reasonInput.value });
  });
  undoButton.addEventListener("click", undo);

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) {
      if (event.key === "Escape") target.blur();
      if (event.key === "Enter" && target === reasonInput && item) {  // not the form's first button (a class)
        event.preventDefault();
        send({ id: item.id, action: "reject", reason: reasonInput.value });
      }
      return;  // typing a reason
    }
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const byKey = classButtons.find((b) => b.dataset.key === key);
    if (byKey) { event.preventDefault(); label(byKey.dataset.class); return; }
    if (key === "Enter") {
      event.preventDefault();
      if (!item) return;
      if (item.predicted_class && classButtons.some((b) => b.dataset.class === item.predicted_class)) {
        label(item.predicted_class);
      } else {
        say("The model named no class of the list for this one: press a number.", true);
      }
    } else if (key === "s" && item) { event.preventDefault(); send({ id: item.id, action: "skip" }); }
    else if (key === "r" && item) { event.preventDefault(); send({ id: item.id, action: "reject", reason: reasonInput.value }); }
    else if (key === "u") { event.preventDefault(); undo(); }
  });
}());
