// A small hand-written SVG line chart for per-epoch curves (no charting library to ship).

const NS = "http://www.w3.org/2000/svg";
const W = 460;
const H = 220;
const PAD = { left: 48, right: 14, top: 12, bottom: 34 };

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

/** Round tick values: 1, 2 or 5 times a power of ten, about `count` of them. */
function ticks(min, max, count) {
  const span = max - min || 1;
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/**
 * Draw `series` ([{name, points: [[epoch, value], …]}]) into `container`.
 * `yRange` fixes the y axis (e.g. [0, 1] for accuracy); otherwise it fits the data.
 */
export function drawChart(container, series, { yRange = null, epochs = 0, yLabel = "" } = {}) {
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  const lastEpoch = Math.max(epochs, 1, ...series.flatMap((s) => s.points.map((p) => p[0])));
  let [yMin, yMax] = yRange || [Math.min(0, ...values), Math.max(...values, 0.1)];
  if (!yRange) yMax *= 1.08; // headroom so the top point is not on the frame
  const x = (e) => PAD.left + ((e - 1) / Math.max(lastEpoch - 1, 1)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - ((v - yMin) / (yMax - yMin || 1)) * (H - PAD.top - PAD.bottom);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart-svg" });
  root.append(svg("title", {}, yLabel));
  for (const v of ticks(yMin, yMax, 4)) {
    root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: PAD.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, v));
  }
  const xTicks = ticks(1, lastEpoch, Math.min(lastEpoch - 1, 8) || 1).filter(Number.isInteger);
  for (const e of xTicks) {
    root.append(svg("text", { x: x(e), y: H - PAD.bottom + 16, class: "tick", "text-anchor": "middle" }, e));
  }
  root.append(svg("text", { x: (W + PAD.left) / 2, y: H - 4, class: "axis", "text-anchor": "middle" }, "epoch"));
  root.append(svg("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom, class: "frame" }));
  root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom, class: "frame" }));

  series.forEach((s, i) => {
    const points = s.points.filter((p) => typeof p[1] === "number");
    const group = svg("g", { class: `series series-${i}`, "data-series": s.name });
    if (points.length > 1) {
      group.append(svg("polyline", { points: points.map((p) => `${x(p[0])},${y(p[1])}`).join(" ") }));
    }
    for (const [epoch, value] of points) {
      const dot = svg("circle", { cx: x(epoch), cy: y(value), r: 3.5, "data-epoch": epoch });
      dot.append(svg("title", {}, `${s.name}, epoch ${epoch}: ${value.toFixed(4)}`));
      group.append(dot);
    }
    root.append(group);
  });

  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    item.className = `series-${i}`;
    item.textContent = s.name;
    legend.append(item);
  });
  if (!values.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "waiting for the first epoch…"));
  }
  container.replaceChildren(root, legend);
}
