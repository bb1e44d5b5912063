// Datasets view: upload an archive by drag and drop, list what is there.

import { ApiError, listAll, postForm, request } from "./api.js";
import { $, bytes, dropZone, el, showMessage, when } from "./dom.js";

const view = $("#view-datasets");
const tbody = $("[data-testid=datasets-table] tbody", view);
const status = $("[data-testid=dataset-upload-status]", view);
const ARCHIVE = /\.(zip|tar|tar\.gz|tgz)$/i;

function splits(s) {
  return ["train", "val", "test"]
    .filter((k) => s?.[k])
    .map((k) => `${k} ${s[k]}`)
    .join(" · ");
}

function row(ds) {
  const classes = ds.classes.length > 6 ? `${ds.classes.slice(0, 6).join(", ")}, …` : ds.classes.join(", ");
  const warnings = ds.warnings?.length
    ? el("span", { class: "warn", title: ds.warnings.map((w) => w.message).join("\n") }, ` ⚠ ${ds.warnings.length}`)
    : null;
  return el(
    "tr",
    { dataset: { testid: "dataset-row", id: ds.id } },
    el("td", {}, ds.name, warnings),
    el("td", { class: "mono" }, ds.id),
    el("td", { class: "num" }, ds.num_images),
    el("td", { title: ds.classes.join(", ") }, `${ds.classes.length}: ${classes}`),
    el("td", { class: "nowrap" }, splits(ds.splits)),
    el("td", { class: "num nowrap" }, bytes(ds.size_bytes)),
    el("td", { class: "nowrap" }, when(ds.created_at)),
    el(
      "td",
      { class: "actions" },
      el("a", { class: "button small", href: `#/jobs?dataset=${encodeURIComponent(ds.id)}` }, "Train"),
      el("button", { type: "button", class: "small secondary", onclick: () => remove(ds) }, "Delete"),
    ),
  );
}

async function remove(ds) {
  if (!window.confirm(`Delete dataset ${ds.name} (${ds.id})?`)) return;
  try {
    await request(`/v1/datasets/${encodeURIComponent(ds.id)}`, { method: "DELETE" });
    showMessage(`Deleted ${ds.name}.`);
    await refresh();
  } catch (error) {
    showMessage(error);
  }
}

export async function refresh() {
  const datasets = await listAll("/v1/datasets?limit=100");
  tbody.replaceChildren(
    ...(datasets.length
      ? datasets.map(row)
      : [el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No datasets yet: drop an archive above."))]),
  );
}

async function upload(files) {
  const file = files[0];
  if (!ARCHIVE.test(file.name)) {
    showMessage(new ApiError(0, { title: "Not an archive", detail: `${file.name}: choose a .zip, .tar or .tar.gz` }));
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  status.textContent = `Uploading and checking ${file.name}…`;
  try {
    const ds = await postForm("/v1/datasets", form);
    status.textContent = `${ds.name}: ${ds.num_images} images, ${ds.classes.length} classes.`;
    showMessage(`Dataset ${ds.name} uploaded (${ds.id}).`);
    await refresh();
  } catch (error) {
    status.textContent = "";
    showMessage(error);
  }
}

dropZone($("[data-testid=dataset-drop]", view), $("[data-testid=dataset-file]", view), upload);

export async function show() {
  await refresh();
}
