// Jobs view: the new-job form and the jobs table, refreshed every couple of seconds.

import { getJSON, listAll, postJSON } from "./api.js";
import { $, badge, el, percent, progressBar, showMessage, when } from "./dom.js";

const POLL_MS = 2000;
const view = $("#view-jobs");
const form = $("[data-testid=job-form]", view);
const tbody = $("[data-testid=jobs-table] tbody", view);
const NUMBERS = ["trainable_layers", "epochs", "batch_size", "learning_rate", "image_size", "seed"];
let backbones = null;
let models = [];
let generation = 0; // bumped on hide(), so an in-flight poll from an old visit stops

function option(value, label, selected = false) {
  return el("option", { value, selected }, label);
}

function fillWeights() {
  const name = form.backbone.value;
  const entry = (backbones || []).find((b) => b.name === name);
  const weights = entry?.weights || [];
  const missing = (w) => (w.present ? "" : " – file not cached");
  const def = weights.find((w) => w.default);
  const options = [option("DEFAULT", `DEFAULT (pretrained${def ? missing(def) : ""})`, true)];
  for (const w of weights) options.push(option(w.name, `${w.name}${missing(w)}`));
  options.push(option("none", "none (random init)"));
  for (const m of models.filter((m) => m.backbone === name)) {
    options.push(option(`model:${m.id}`, `from model ${m.id}`));
  }
  form.weights.replaceChildren(...options);
}

async function fillForm(preselect) {
  const datasets = await listAll("/v1/datasets?limit=100");
  const chosen = preselect || form.dataset_id.value;
  form.dataset_id.replaceChildren(
    ...datasets.map((d) => option(d.id, `${d.name} (${d.num_images} images, ${d.classes.length} classes)`, d.id === chosen)),
  );
  if (!datasets.length) form.dataset_id.append(option("", "upload a dataset first"));
  if (!backbones) {
    backbones = (await getJSON("/v1/backbones")).data;
    form.backbone.replaceChildren(...backbones.map((b) => option(b.name, b.name, b.name === "resnet18")));
  }
  models = await listAll("/v1/models?limit=100", 2);
  fillWeights();
}

function spec() {
  const data = new FormData(form);
  const body = {};
  for (const [name, value] of data.entries()) body[name] = NUMBERS.includes(name) ? Number(value) : value;
  body.augment = form.augment.checked;
  if (body.strategy !== "partial") delete body.trainable_layers;
  if (body.weights === "none") body.weights = null;
  else if (body.weights.startsWith("model:")) body.weights = { model_id: body.weights.slice(6) };
  return body;
}

form.backbone.addEventListener("change", fillWeights);
form.strategy.addEventListener("change", () => {
  $("[data-show=partial]", form).hidden = form.strategy.value !== "partial";
});
$("[data-show=partial]", form).hidden = true;

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("[data-testid=job-submit]", form);
  button.disabled = true;
  try {
    const job = await postJSON("/v1/jobs", spec());
    showMessage(`Job ${job.id} ${job.status}.`);
    await refresh();
  } catch (error) {
    showMessage(error);
  } finally {
    button.disabled = false;
  }
});

function row(job) {
  const open = () => (location.hash = `#/jobs/${encodeURIComponent(job.id)}`);
  const progress = job.progress || {};
  const detail = job.status === "queued" && job.queue ? job.queue.reason : job.error?.message;
  return el(
    "tr",
    { class: "link", dataset: { testid: "job-row", id: job.id, status: job.status }, onclick: open },
    el("td", { class: "mono" }, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    el("td", { title: detail || "" }, badge(job.status)),
    el(
      "td",
      {},
      el(
        "div",
        { class: "progress-cell" },
        progressBar(job.status === "succeeded" ? 1 : progress.fraction, "job-progress"),
        el("span", { class: "muted" }, progress.epochs ? `epoch ${progress.epoch}/${progress.epochs}` : ""),
      ),
    ),
    el("td", {}, job.spec.backbone, el("span", { class: "muted" }, ` · ${job.spec.strategy}`)),
    el("td", { class: "num" }, percent(job.metrics?.best_val_accuracy ?? job.metrics?.val_accuracy)),
    el("td", { class: "nowrap" }, when(job.created_at)),
  );
}

export async function refresh() {
  const page = await getJSON("/v1/jobs?limit=50");
  tbody.replaceChildren(
    ...(page.data.length
      ? page.data.map(row)
      : [el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No jobs yet: start one above."))]),
  );
}

function poll(visit) {
  setTimeout(async () => {
    if (visit !== generation) return;
    try {
      await refresh();
    } catch (error) {
      showMessage(error);
    }
    poll(visit);
  }, POLL_MS);
}

export async function show(params) {
  const visit = generation;
  poll(visit);
  await Promise.all([fillForm(params.get("dataset")), refresh()]);
}

export function hide() {
  generation += 1;
}
