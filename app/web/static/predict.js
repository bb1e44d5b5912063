// The predict box: drop images (or choose them), POST them to the model, show top-k with bars.

import { postForm } from "./api.js";
import { dropZone, el, percent, showMessage } from "./dom.js";

const TOP_K = 5;

function resultCard(prediction, file) {
  const preview = el("img", { alt: prediction.filename, class: "thumb" });
  preview.src = URL.createObjectURL(file);
  preview.addEventListener("load", () => URL.revokeObjectURL(preview.src), { once: true });
  const rows = prediction.top_k.map((entry, i) => {
    const fill = el("div");
    fill.style.width = `${Math.max(entry.score * 100, 0.5)}%`;
    return el(
      "li",
      { class: i === 0 ? "top" : null, dataset: { testid: "prediction-label", label: entry.label } },
      el("span", { class: "label" }, entry.label),
      el("div", { class: "scorebar" }, fill),
      el("span", { class: "score" }, percent(entry.score)),
    );
  });
  return el(
    "div",
    { class: "prediction", dataset: { testid: "prediction" } },
    preview,
    el(
      "div",
      { class: "prediction-body" },
      el("div", { class: "prediction-file" }, prediction.filename),
      el("ol", { class: "topk" }, ...rows),
    ),
  );
}

/** Fill `container` with a predict box for `modelId`. */
export function mountPredict(container, modelId) {
  const input = el("input", {
    type: "file",
    accept: "image/*",
    multiple: true,
    hidden: true,
    dataset: { testid: "predict-file" },
  });
  const zone = el(
    "label",
    { class: "dropzone small", dataset: { testid: "predict-drop" } },
    input,
    el("strong", {}, "Drop images here"),
    el("span", {}, `or click to choose; the model's top ${TOP_K} labels appear below`),
  );
  const results = el("div", { class: "predictions", dataset: { testid: "predictions" } });
  container.replaceChildren(zone, results);

  dropZone(zone, input, async (files) => {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    zone.classList.add("busy");
    try {
      const path = `/v1/models/${encodeURIComponent(modelId)}/predict?top_k=${TOP_K}`;
      const answer = await postForm(path, form);
      results.replaceChildren(
        ...answer.predictions.map((p, i) => resultCard(p, files[i] || files[0])),
      );
    } catch (error) {
      showMessage(error);
    } finally {
      zone.classList.remove("busy");
    }
  });
}
