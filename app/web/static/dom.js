// Small DOM and formatting helpers shared by the views (text only, never innerHTML).

/** el("td", {class: "x", dataset: {testid: "y"}}, "text", child) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function field(root, name) {
  return root.querySelector(`[data-field="${name}"]`);
}

let messageTimer = null;

/** Show an info line or an API problem (title, detail, each field error) above the view. */
export function showMessage(what, kind = "info") {
  const box = $("#message");
  box.replaceChildren();
  box.className = `message ${kind}`;
  if (what instanceof Error) {
    box.className = "message error";
    const problem = what.problem || {};
    const title = problem.title ? `${problem.title}: ` : "";
    box.append(el("strong", {}, title), what.message);
    if (problem.code) box.append(" ", el("code", {}, problem.code));
    const errors = problem.errors || [];
    if (errors.length) {
      const list = el("ul");
      for (const e of errors.slice(0, 20)) {
        const where = e.field || e.path || e.file || "";
        list.append(el("li", {}, where ? `${where}: ` : "", e.message || JSON.stringify(e)));
      }
      box.append(list);
    }
  } else {
    box.append(String(what));
  }
  box.hidden = false;
  clearTimeout(messageTimer);
  // Errors stay until the next action; confirmations fade.
  if (kind !== "error" && !(what instanceof Error)) {
    messageTimer = setTimeout(() => (box.hidden = true), 6000);
  }
}

export function clearMessage() {
  $("#message").hidden = true;
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function percent(x) {
  return typeof x === "number" ? `${(x * 100).toFixed(1)}%` : "–";
}

export function number(x, digits = 4) {
  return typeof x === "number" ? x.toFixed(digits) : "–";
}

export function badge(status) {
  return el("span", { class: `badge ${status}`, dataset: { testid: "status" } }, status);
}

/** A progress bar whose fill width is set through the CSSOM (allowed by the page's CSP). */
export function progressBar(fraction, testid = "progress") {
  const fill = el("div");
  fill.style.width = `${Math.round((fraction || 0) * 100)}%`;
  const bar = el("div", { class: "progress", dataset: { testid }, title: percent(fraction) }, fill);
  bar.dataset.fraction = String(fraction || 0);
  return bar;
}

/** Wire a drop zone (drag and drop, plus the file input inside it) to `onFiles`. */
export function dropZone(zone, input, onFiles) {
  const stop = (event) => {
    event.preventDefault();
    event.stopPropagation();
  };
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      stop(event);
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    stop(event);
    zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    stop(event);
    zone.classList.remove("over");
    const files = [...(event.dataTransfer?.files || [])];
    if (files.length) onFiles(files);
  });
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // the same file can be chosen again
    if (files.length) onFiles(files);
  });
}
