// Models view: the trained models, their downloads, and a predict box for the chosen one.

import { download, getJSON, listAll } from "./api.js";
import { $, el, field, percent, showMessage, when } from "./dom.js";
import { mountPredict } from "./predict.js";

const view = $("#view-models");
const tbody = $("[data-testid=models-table] tbody", view);

function row(model, selected) {
  const path = `/v1/models/${encodeURIComponent(model.id)}/content`;
  const save = (event) => {
    event.stopPropagation();
    download(path, `${model.id}.safetensors`).catch(showMessage);
  };
  const open = () => (location.hash = `#/models/${encodeURIComponent(model.id)}`);
  const m = model.metrics || {};
  return el(
    "tr",
    { class: selected ? "link selected" : "link", dataset: { testid: "model-row", id: model.id }, onclick: open },
    el("td", { class: "mono" }, model.id),
    el("td", {}, model.backbone),
    el("td", { title: model.classes.join(", ") }, String(model.classes.length)),
    el("td", { class: "num" }, `${model.image_size}px`),
    el("td", { class: "num" }, percent(m.best_val_accuracy ?? m.val_accuracy)),
    el("td", { class: "nowrap" }, when(model.created_at)),
    el(
      "td",
      { class: "actions" },
      el("a", { class: "button small secondary", href: `#/jobs/${encodeURIComponent(model.job_id)}`, onclick: (e) => e.stopPropagation() }, "Job"),
      el("button", { type: "button", class: "small", onclick: save }, "Download"),
    ),
  );
}

export async function show(params, modelId) {
  const models = await listAll("/v1/models?limit=100");
  tbody.replaceChildren(
    ...(models.length
      ? models.map((m) => row(m, m.id === modelId))
      : [el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No models yet: one appears when a job succeeds."))]),
  );
  const card = field(view, "model-predict");
  card.hidden = !modelId;
  if (!modelId) return;
  const model = models.find((m) => m.id === modelId) || (await getJSON(`/v1/models/${encodeURIComponent(modelId)}`));
  field(view, "model-title").textContent = `Try ${model.id} (${model.backbone}, ${model.classes.length} classes)`;
  mountPredict($("[data-predict]", card), model.id);
}
