// A job's live events. EventSource cannot send an Authorization header, so the stream is
// read with fetch() and parsed here; a dropped connection resumes with Last-Event-ID.

import { authHeaders } from "./api.js";

const RETRY_MS = 2000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Parse one SSE block ("id:", "event:", "data:" lines; ":" lines are keep-alives). */
function parseBlock(block) {
  const message = { id: null, event: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "id") message.id = value;
    else if (name === "event") message.event = value;
    else if (name === "data") message.data.push(value);
  }
  return message.data.length ? { ...message, data: message.data.join("\n") } : null;
}

/**
 * Read one connection until the server ends it; returns the last event id and status seen
 * and whether the job ended. The server ends the stream at the job's end, which is not a
 * retried job's earlier terminal event: only a close after a terminal status means done.
 */
async function readOnce(path, lastId, lastStatus, onEvent, onError, signal) {
  const headers = { Accept: "text/event-stream", ...authHeaders() };
  if (lastId) headers["Last-Event-ID"] = lastId;
  const response = await fetch(path, { headers, signal, cache: "no-store" });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    onError(response.status, problem);
    // 4xx will not heal by retrying (bad key, job gone); 5xx might.
    return { lastId, lastStatus, ended: response.status < 500 };
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let pendingCR = false; // a "\r\n" may be split across two chunks
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return { lastId, lastStatus, ended: TERMINAL.has(lastStatus) };
    let text = (pendingCR ? "\r" : "") + value;
    pendingCR = text.endsWith("\r");
    if (pendingCR) text = text.slice(0, -1);
    buffer += text.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const message = parseBlock(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (!message) continue;
      if (message.id) lastId = message.id;
      const event = JSON.parse(message.data);
      onEvent(event);
      if (event.type === "status") lastStatus = event.data?.status;
    }
  }
}

/**
 * Follow /v1/jobs/{id}/events until the terminal status event or until `abort()`.
 * onEvent gets each event object ({id, type, message, data}); onError(status, problem).
 */
export function followEvents(jobId, { onEvent, onError = () => {}, onEnd = () => {} }) {
  const controller = new AbortController();
  const { signal } = controller;
  const path = `/v1/jobs/${encodeURIComponent(jobId)}/events`;
  (async () => {
    let lastId = null;
    let lastStatus = null;
    while (!signal.aborted) {
      try {
        const result = await readOnce(path, lastId, lastStatus, onEvent, onError, signal);
        ({ lastId, lastStatus } = result);
        if (result.ended) break;
      } catch (error) {
        if (signal.aborted) break;
        console.warn("event stream interrupted, resuming", error);
      }
      await sleep(RETRY_MS, signal);
    }
    if (!signal.aborted) onEnd();
  })();
  return { abort: () => controller.abort() };
}
