// The /v1 API as the page uses it: the key on every call, problem+json turned into errors.

const KEY_STORAGE = "finetune.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An API error carrying the problem document (title, detail, code, errors). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { title: response.statusText || `HTTP ${response.status}`, code: "http_error" };
  }
}

/** fetch() with the key; resolves to the Response, throws ApiError for 4xx/5xx. */
export async function request(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  return response;
}

export async function getJSON(path) {
  return (await request(path, { headers: { Accept: "application/json" } })).json();
}

export async function postJSON(path, body) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

export async function postForm(path, form) {
  // No Content-Type: the browser sets multipart/form-data with its boundary.
  return (await request(path, { method: "POST", body: form })).json();
}

/** A same-origin blob: URL for an authenticated binary (plots); the caller revokes it. */
export async function blobURL(path) {
  return URL.createObjectURL(await (await request(path)).blob());
}

function filenameOf(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const star = /filename\*=(?:UTF-8'')?([^;]+)/i.exec(header);
  if (star) return decodeURIComponent(star[1].replace(/"/g, ""));
  const plain = /filename="?([^";]+)"?/i.exec(header);
  return plain ? plain[1] : fallback;
}

/** Download through fetch (so the key is sent) and save it via a Blob URL. */
export async function download(path, fallbackName) {
  const response = await request(path);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filenameOf(response, fallbackName);
  document.body.append(link);
  link.click();
  link.remove();
  // Revoke later: the download reads the blob after click() returns.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** All items of a cursor-paged list (bounded, so a huge account cannot hang the page). */
export async function listAll(path, maxPages = 10) {
  const items = [];
  let after = null;
  for (let page = 0; page < maxPages; page += 1) {
    const sep = path.includes("?") ? "&" : "?";
    const url = after ? `${path}${sep}after=${encodeURIComponent(after)}` : path;
    const body = await getJSON(url);
    items.push(...body.data);
    if (!body.has_more || !body.next_cursor) break;
    after = body.next_cursor;
  }
  return items;
}
