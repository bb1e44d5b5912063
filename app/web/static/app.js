// Entry point: the API key field and a hash router over the views (#/datasets, #/jobs,
// #/jobs/<id>, #/models, #/models/<id>). Hash routes need no server-side routing.

import { apiKey, setApiKey } from "./api.js";
import * as datasets from "./datasets.js";
import { $, clearMessage, showMessage } from "./dom.js";
import * as job from "./job.js";
import * as jobs from "./jobs.js";
import * as models from "./models.js";

const ROUTES = [
  { pattern: /^\/datasets$/, view: "datasets", nav: "datasets", module: datasets },
  { pattern: /^\/jobs$/, view: "jobs", nav: "jobs", module: jobs },
  { pattern: /^\/jobs\/([^/]+)$/, view: "job", nav: "jobs", module: job },
  { pattern: /^\/models(?:\/([^/]+))?$/, view: "models", nav: "models", module: models },
];
let current = null;

async function route() {
  const [path, query = ""] = (location.hash.slice(1) || "/datasets").split("?");
  const match = ROUTES.map((r) => ({ r, m: r.pattern.exec(path) })).find((x) => x.m);
  if (!match) {
    location.hash = "#/datasets";
    return false;
  }
  current?.module.hide?.();
  current = match.r;
  clearMessage(); // a message belongs to the view it came from
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${current.view}`;
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === current.nav);
  }
  const id = match.m[1] ? decodeURIComponent(match.m[1]) : undefined;
  try {
    await current.module.show(new URLSearchParams(query), id);
    return true;
  } catch (error) {
    showMessage(error);
    return false;
  }
}

const keyForm = $("[data-testid=api-key-form]");
keyForm.querySelector("input").value = apiKey();
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(keyForm.querySelector("input").value.trim());
  route().then((ok) => ok && showMessage(apiKey() ? "API key saved in this browser." : "API key cleared."));
});

window.addEventListener("hashchange", route);
route();
