// Moorage console: copy buttons, confirmations for destructive forms, search as you type. No dependencies.
"use strict";

function copyByCommand(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "absolute";
  area.style.left = "-9999px";
  document.body.appendChild(area);
  area.select();
  try { document.execCommand("copy"); } finally { area.remove(); }
}

function copyText(text) {
  // The Clipboard API where the page may use it (https, localhost), else the older select-and-copy.
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text).catch(() => copyByCommand(text));
  }
  copyByCommand(text);
  return Promise.resolve();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  copyText(button.dataset.copy).then(() => {
    const label = button.textContent;
    button.textContent = "Copied";
    button.classList.add("done");
    setTimeout(() => { button.textContent = label; button.classList.remove("done"); }, 1500);
  });
});

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// Search as you type: fetch the same page with ?q= and swap in its results (the form works without this).
document.querySelectorAll("form[data-live-search]").forEach((form) => {
  const input = form.querySelector("input[name=q]");
  if (!input) return;
  let timer = null;
  let controller = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (controller) controller.abort();
      controller = new AbortController();
      const url = new URL(form.action, window.location.href);
      if (input.value.trim()) url.searchParams.set("q", input.value.trim());
      try {
        const response = await fetch(url, { signal: controller.signal, credentials: "same-origin" });
        if (!response.ok) return;
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector(form.dataset.liveSearch);
        const current = document.querySelector(form.dataset.liveSearch);
        if (fresh && current) {
          current.replaceWith(fresh);
          history.replaceState(null, "", url.pathname + url.search);
        }
      } catch (e) {
        if (e.name !== "AbortError") throw e;
      }
    }, 250);
  });
});
