// Berth UI: copy buttons, select-all checkboxes, confirmations. Pages work without this file;
// it never builds HTML from data (textContent and attributes only).
"use strict";

function copyText(text, button) {
  const done = () => {
    button.textContent = "Copied";
    button.dataset.copied = text;
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  };
  const fallback = () => {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } finally { area.remove(); }
    done();
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, fallback);
  } else {
    fallback();
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const source = button.dataset.copyFrom ? document.getElementById(button.dataset.copyFrom) : null;
  const text = source ? source.textContent.trim() : button.dataset.copy;
  if (text) copyText(text, button);
});

document.addEventListener("change", (event) => {
  const all = event.target.closest("input.select-all");
  if (!all) return;
  const form = all.closest("form");
  form.querySelectorAll(`input[type=checkbox][name="${all.dataset.select}"]`).forEach((box) => {
    box.checked = all.checked;
  });
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset.confirm;
  if (!question) return;
  const boxes = form.querySelectorAll("input[type=checkbox][name=tag]");
  if (boxes.length && !form.querySelector("input[type=checkbox][name=tag]:checked")) {
    event.preventDefault();
    return;
  }
  const names = Array.from(form.querySelectorAll("input[name=tag]:checked"), (b) => b.value);
  if (!window.confirm(names.length ? `${question}\n${names.join(", ")}` : question)) {
    event.preventDefault();
  }
});
