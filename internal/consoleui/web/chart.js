// chart.js draws time-series line charts as SVG, without dependencies.
//
//   const c = new LineChart(element, { title: "Events appended", unit: "/s", format: fmtRate });
//   c.update(times, [{ name: "events/s", values: [...] }]);
//
// times are Date.getTime() values in ascending order; a value of null breaks its line.

const SVG = "http://www.w3.org/2000/svg";
const W = 560, H = 170, PAD = { left: 58, right: 10, top: 10, bottom: 22 };
const COLORS = ["#2f6fdf", "#e0752d", "#2a9d63", "#b8428c", "#7a5cc7", "#c9a227", "#1f9fb4", "#d64545"];

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

// niceMax rounds a maximum up to 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// clock writes a time as HH:MM, or HH:MM:SS when the chart spans less than ten minutes.
function clock(t, span) {
  return new Date(t).toTimeString().slice(0, span < 600000 ? 8 : 5);
}

export class LineChart {
  // element receives the chart; opts.title names it, opts.format(value) writes an axis
  // label or a value, and opts.integer makes the axis count in whole numbers.
  constructor(element, opts) {
    this.opts = Object.assign({ format: (v) => String(v) }, opts);
    this.root = document.createElement("figure");
    this.root.className = "chart";
    const cap = document.createElement("figcaption");
    cap.textContent = this.opts.title;
    this.legend = document.createElement("ul");
    this.legend.className = "legend";
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": this.opts.title });
    this.root.append(cap, this.svg, this.legend);
    element.appendChild(this.root);
    this.points = 0;
  }

  // update redraws the chart with series [{name, values}] over times.
  update(times, series) {
    const svg = this.svg;
    svg.replaceChildren();
    this.legend.replaceChildren();
    const x0 = times.length ? times[0] : 0;
    const x1 = times.length > 1 ? times[times.length - 1] : x0 + 1;
    let max = 0;
    for (const s of series) for (const v of s.values) if (v != null && v > max) max = v;
    // A count (connections) gets whole-number ticks.
    max = niceMax(max);
    if (this.opts.integer && max < 20) max = Math.max(4, Math.ceil(max / 4) * 4);
    const pw = W - PAD.left - PAD.right, ph = H - PAD.top - PAD.bottom;
    const px = (t) => PAD.left + ((t - x0) / (x1 - x0 || 1)) * pw;
    const py = (v) => PAD.top + ph - (v / max) * ph;
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4, y = py(v);
      el("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: i ? "grid" : "axis" }, svg);
      const label = el("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, svg);
      label.textContent = this.opts.format(v);
    }
    if (times.length) {
      for (let k = 0; k <= 4; k++) {
        const t = x0 + ((x1 - x0) * k) / 4;
        const anchor = k === 0 ? "start" : k === 4 ? "end" : "middle";
        const label = el("text", { x: px(t), y: H - 6, "text-anchor": anchor, class: "tick" }, svg);
        label.textContent = clock(t, x1 - x0);
      }
    }
    this.points = 0;
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      let d = "", pen = false;
      s.values.forEach((v, j) => {
        if (v == null) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${px(times[j]).toFixed(1)},${py(v).toFixed(1)}`;
        pen = true;
        this.points++;
      });
      if (d) el("path", { d, stroke: color, fill: "none", "stroke-width": 1.6, "data-series": s.name }, svg);
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.dataset.color = String(i % COLORS.length);
      const last = [...s.values].reverse().find((v) => v != null);
      li.append(sw, `${s.name}: ${last == null ? "–" : this.opts.format(last)}`);
      this.legend.appendChild(li);
    });
    if (!series.length || !times.length) {
      const t = el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg);
      t.textContent = "no data yet";
    }
  }
}
