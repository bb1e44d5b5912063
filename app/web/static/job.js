// Job page: status and progress, live curves from the SSE stream, confusion matrix,
// checkpoint downloads and, once a model exists, the predict box.

import { blobURL, download, getJSON, listAll, request } from "./api.js";
import { drawChart } from "./chart.js";
import { $, bytes, el, field, number, percent, showMessage, when } from "./dom.js";
import { mountPredict } from "./predict.js";
import { followEvents } from "./sse.js";

const POLL_MS = 2000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const view = $("#view-job");
const cancelButton = $("[data-testid=job-cancel]", view);
const confusion = $("[data-testid=confusion]", view);
const eventsList = $("[data-testid=events]", view);

// State of the page being shown; `visit` tells late answers from an earlier page to stop.
let visit = 0;
let job = null;
let epochs = new Map();
let stream = null;
let finished = false;

function series(key, name) {
  const points = [...epochs.values()].filter((m) => typeof m[key] === "number").map((m) => [m.epoch, m[key]]);
  return points.length ? [{ name, points }] : [];
}

function drawCurves() {
  const total = job?.spec.epochs || 0;
  drawChart($("[data-testid=loss-chart]", view), [...series("train_loss", "train"), ...series("val_loss", "val")], {
    epochs: total,
    yLabel: "loss",
  });
  drawChart(
    $("[data-testid=accuracy-chart]", view),
    [...series("val_accuracy", "val accuracy"), ...series("train_accuracy", "train accuracy")],
    { epochs: total, yRange: [0, 1], yLabel: "accuracy" },
  );
}

function weightsText(weights) {
  if (weights === null) return "random init";
  return typeof weights === "object" ? `from ${weights.model_id}` : weights;
}

function renderJob() {
  const s = job.spec;
  field(view, "id").textContent = job.id;
  field(view, "title").textContent = `${s.backbone} · ${s.strategy.replace("_", " ")}`;
  const status = field(view, "status");
  status.textContent = job.status;
  status.className = `badge ${job.status}`;
  const fraction = job.status === "succeeded" ? 1 : job.progress?.fraction || 0;
  const bar = $("[data-testid=job-progress-bar]", view);
  bar.style.width = `${Math.round(fraction * 100)}%`;
  bar.parentElement.dataset.fraction = String(fraction);
  const m = job.metrics || {};
  const state = [
    job.progress?.epochs ? `epoch ${job.progress.epoch}/${job.progress.epochs}` : null,
    job.status === "queued" && job.queue ? job.queue.reason : null,
    job.error ? `error ${job.error.code}: ${job.error.message}` : null,
  ];
  field(view, "summary").textContent = state.filter(Boolean).join(" · ");
  const bestEpoch = m.best_epoch ? ` (epoch ${m.best_epoch})` : "";
  const best = m.best_val_accuracy != null ? `${percent(m.best_val_accuracy)}${bestEpoch}` : "–";
  const details = [
    ["Dataset", s.dataset_id],
    ["Weights", weightsText(s.weights)],
    ["Training", `${s.epochs} epochs · batch ${s.batch_size} · ${s.image_size}px · augment ${s.augment ? "on" : "off"}`],
    ["Optimizer", `${s.optimizer} · lr ${s.learning_rate} · ${s.lr_schedule}`],
    ["Best val accuracy", best],
    ["Throughput", m.images_per_second ? `${Math.round(m.images_per_second)} images/s` : "–"],
    ["Started", when(job.started_at) || "–"],
    ["Finished", when(job.finished_at) || "–"],
  ];
  field(view, "details").replaceChildren(...details.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  cancelButton.hidden = TERMINAL.has(job.status);
}

async function loadJob(current) {
  const fresh = await getJSON(`/v1/jobs/${encodeURIComponent(job.id)}`);
  if (current !== visit) return;
  job = fresh;
  renderJob();
  if (TERMINAL.has(job.status) && !finished) {
    finished = true;
    await finish(current);
  }
}

function checkpointRow(c) {
  const path = `/v1/jobs/${encodeURIComponent(job.id)}/checkpoints/${encodeURIComponent(c.id)}/content`;
  const save = () => download(path, `${job.id}-epoch${c.epoch}.safetensors`).catch(showMessage);
  const best = job.metrics?.best_epoch === c.epoch;
  return el(
    "tr",
    { dataset: { testid: "checkpoint-row", epoch: c.epoch } },
    el("td", {}, String(c.epoch), best ? el("span", { class: "tag" }, "best") : null),
    el("td", { class: "num" }, number(c.metrics?.val_loss)),
    el("td", { class: "num" }, percent(c.metrics?.val_accuracy)),
    el("td", { class: "num" }, bytes(c.size_bytes)),
    el(
      "td",
      { class: "actions" },
      el("button", { type: "button", class: "small", dataset: { testid: "checkpoint-download" }, onclick: save }, "Download"),
    ),
  );
}

async function loadCheckpoints(current) {
  const rows = await listAll(`/v1/jobs/${encodeURIComponent(job.id)}/checkpoints`);
  if (current !== visit) return;
  const tbody = $("[data-testid=checkpoints-table] tbody", view);
  tbody.replaceChildren(
    ...(rows.length
      ? rows.map(checkpointRow)
      : [el("tr", {}, el("td", { colspan: 5, class: "empty" }, "None yet: one per finished epoch."))]),
  );
}

async function finish(current) {
  await loadCheckpoints(current);
  if (job.status !== "succeeded" || current !== visit) return;
  const url = await blobURL(`/v1/jobs/${encodeURIComponent(job.id)}/plots/confusion.png`);
  if (current !== visit) return URL.revokeObjectURL(url);
  confusion.src = url;
  confusion.hidden = false;
  field(view, "confusion-note").hidden = true;
  if (job.model_id) {
    const modelPath = `/v1/models/${encodeURIComponent(job.model_id)}/content`;
    field(view, "model").replaceChildren(
      "Model ",
      el("a", { class: "mono", href: `#/models/${encodeURIComponent(job.model_id)}` }, job.model_id),
      " (best epoch) ",
      el(
        "button",
        {
          type: "button",
          class: "small",
          dataset: { testid: "model-download" },
          onclick: () => download(modelPath, `${job.model_id}.safetensors`).catch(showMessage),
        },
        "Download model",
      ),
    );
    field(view, "predict-card").hidden = false;
    mountPredict($("[data-predict]", view), job.model_id);
  }
}

function onEvent(current, event) {
  if (current !== visit) return;
  eventsList.prepend(
    el(
      "li",
      { class: `event ${event.type}`, dataset: { testid: "event", type: event.type } },
      el("time", {}, when(event.created_at)),
      el("span", { class: "type" }, event.type),
      event.message,
    ),
  );
  if (event.type === "epoch") {
    epochs.set(event.data.epoch, event.data);
    drawCurves();
  }
  if (event.type === "checkpoint") loadCheckpoints(current).catch(showMessage);
  if (event.type === "status") loadJob(current).catch(showMessage);
}

function poll(current) {
  setTimeout(async () => {
    if (current !== visit || finished) return;
    try {
      await loadJob(current);
    } catch (error) {
      showMessage(error);
    }
    poll(current);
  }, POLL_MS);
}

cancelButton.addEventListener("click", async () => {
  try {
    await request(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
    showMessage(`Cancelling ${job.id}…`);
    await loadJob(visit);
  } catch (error) {
    showMessage(error);
  }
});

function reset() {
  stream?.abort();
  if (confusion.src.startsWith("blob:")) URL.revokeObjectURL(confusion.src);
  confusion.removeAttribute("src");
  confusion.hidden = true;
  field(view, "confusion-note").hidden = false;
  field(view, "model").replaceChildren();
  field(view, "predict-card").hidden = true;
  eventsList.replaceChildren();
  $("[data-testid=checkpoints-table] tbody", view).replaceChildren();
  epochs = new Map();
  finished = false;
}

export async function show(params, jobId) {
  visit += 1;
  const current = visit;
  reset();
  job = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`);
  if (current !== visit) return;
  renderJob();
  drawCurves();
  // Past events arrive first on the stream (from the start), then live ones as they happen.
  stream = followEvents(jobId, {
    onEvent: (event) => onEvent(current, event),
    onError: (status, problem) => showMessage(Object.assign(new Error(problem.detail || `HTTP ${status}`), { problem })),
    onEnd: () => loadJob(current).catch(showMessage),
  });
  if (TERMINAL.has(job.status)) {
    finished = true;
    await finish(current);
  } else {
    poll(current);
    await loadCheckpoints(current);
  }
}

export function hide() {
  visit += 1;
  stream?.abort();
  stream = null;
}
