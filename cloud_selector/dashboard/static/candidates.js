// The candidate grid and the candidate page: multi-select (shift-click selects a range), the
// selection count, a reason before rejecting, and the detail page's neighbours, loaded after
// the page (they scan every embedding of the model version: the slow part).
"use strict";

function setupGrid() {
  const gridForm = document.getElementById("rv-grid-form");
  if (!gridForm) return;
  const boxes = Array.from(gridForm.querySelectorAll('.rv-card input[type=checkbox][name=id]'));
  const count = document.getElementById("rv-selected-count");
  const all = document.getElementById("rv-select-all");
  const buttons = gridForm.querySelectorAll(".rv-actions button[data-action]");
  let last = null;

  function refresh() {
    const n = boxes.filter((b) => b.checked).length;
    if (count) count.textContent = String(n);
    buttons.forEach((b) => { b.disabled = n === 0; });
    boxes.forEach((b) => b.closest(".rv-card").classList.toggle("rv-checked", b.checked));
    if (all) {
      all.checked = n > 0 && n === boxes.length;
      all.indeterminate = n > 0 && n < boxes.length;
    }
  }

  boxes.forEach((box, index) => {
    box.addEventListener("click", (event) => {
      if (event.shiftKey && last !== null && last !== index) {
        const [from, to] = last < index ? [last, index] : [index, last];
        for (let i = from; i <= to; i += 1) boxes[i].checked = box.checked;
      }
      last = index;
      refresh();
    });
  });
  if (all) all.addEventListener("change", () => { boxes.forEach((b) => { b.checked = all.checked; }); refresh(); });
  setupReasonCheck(gridForm);
  refresh();
}

/**
 * A reject needs a reason and a tag a name: say so before posting instead of after. Enter in
 * either field presses its own button (the form's first button, the one Enter would press, queues).
 */
function setupReasonCheck(form) {
  const reject = form.querySelector('button[data-action=reject]');
  const reason = form.querySelector('input[name=reason]');
  if (!reject || !reason) return;
  [["reason", "reject"], ["tag", "tag"]].forEach(([field, action]) => {
    const input = form.querySelector(`input[name=${field}]`);
    const button = form.querySelector(`button[data-action=${action}]`);
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault();
      if (!button.disabled) button.click();
    });
  });
  reject.addEventListener("click", (event) => {
    if (!reason.value.trim()) {
      event.preventDefault();
      reason.setCustomValidity("Give a reason to reject (it is kept in the history).");
      reason.reportValidity();
      reason.focus();
    }
  });
  reason.addEventListener("input", () => reason.setCustomValidity(""));
  const tagButton = form.querySelector('button[data-action=tag]');
  const tagInput = form.querySelector('input[name=tag]');
  if (tagButton && tagInput) {
    tagButton.addEventListener("click", (event) => {
      if (!tagInput.value.trim()) {
        event.preventDefault();
        tagInput.setCustomValidity("Type a tag name.");
        tagInput.reportValidity();
      }
    });
    tagInput.addEventListener("input", () => tagInput.setCustomValidity(""));
  }
}

async function loadNeighbours() {
  const box = document.querySelector("[data-neighbours-url]");
  if (!box) return;
  try {
    const response = await fetch(box.dataset.neighboursUrl, { credentials: "same-origin",
                                                              headers: { Accept: "text/html" } });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    box.innerHTML = await response.text();  // rendered (and escaped) by the server
    box.setAttribute("aria-busy", "false");
  } catch (error) {
    box.textContent = `The neighbours could not be loaded (${error.message}): reload the page to try again.`;
    box.classList.add("error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupGrid();
  const detailActions = document.querySelector(".rv-detail-actions");
  if (detailActions) setupReasonCheck(detailActions);
  loadNeighbours();
});
