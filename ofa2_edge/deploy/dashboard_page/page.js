// ofa2-edge dashboard: read the JSON blob, filter the candidates with the two sliders,
// redraw the Pareto chart and the table. The blob's layout is documented in
// ofa2_edge/deploy/dashboard.py; nothing here touches the network.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const cands = data.candidates;
  const $ = (id) => document.getElementById(id);
  const ui = {
    device: $("device"), maxLat: $("max-latency"), minTop1: $("min-top1"),
    maxLatText: $("max-latency-value"), minTop1Text: $("min-top1-value"),
    count: $("count"), body: document.querySelector("#candidates tbody"),
  };
  const plotConfig = { displaylogo: false, responsive: true };
  let dev = data.devices[0];
  // The ensemble front (ofa2-edge ensemble), when the page has one: shown on its device only.
  const ens = data.ensembles;
  const ensHere = () => (ens && ens.device === dev.key ? ens.rows : []);
  function ensPassing() {
    const maxLat = parseFloat(ui.maxLat.value), minTop1 = parseFloat(ui.minTop1.value);
    return ensHere().filter((r) => r.lat <= maxLat && r.top1 >= minTop1);
  }
  function ensHover(r) {
    return [`<b>${esc(r.id)}</b>: ${r.n} member(s), ${esc(ens.mode)}, soft vote`, esc(r.members.join(" ")),
      `val top-1 ${fmt(r.top1, 2)} % (test ${fmt(r.test, 2)} %), MACs ${fmt(r.macs, 1)} M`,
      `predicted ${fmt(r.lat, 2)} ms` + (r.measured_ms !== null ? `, measured ${fmt(r.measured_ms, 2)} ms` : "")].join("<br>");
  }

  const fmt = (x, digits) => (x === null || x === undefined ? "\u2013" : x.toFixed(digits));
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  const finite = (values) => values.filter((v) => v !== null);

  // A range slider spanning `values`, in round decimal steps (so its value reads back exactly),
  // set to its maximum or minimum (every candidate passes); disabled when there is nothing to filter.
  function setRange(input, values, at) {
    const lo = values.length ? Math.min(...values) : 0, hi = values.length ? Math.max(...values) : 0;
    const decimals = hi > lo ? Math.max(0, Math.ceil(-Math.log10((hi - lo) / 500))) : 2;
    const step = Math.pow(10, -decimals);
    input.step = step.toFixed(decimals);
    let min = Math.floor(lo / step) * step, max = Math.ceil(hi / step) * step;
    if (parseFloat(min.toFixed(decimals)) > lo) min -= step;  // the division may round the wrong way
    if (parseFloat(max.toFixed(decimals)) < hi) max += step;
    input.min = min.toFixed(decimals);
    input.max = max.toFixed(decimals);
    input.value = at === "max" ? input.max : input.min;
    input.disabled = values.length === 0;
  }

  function passing() {
    const maxLat = parseFloat(ui.maxLat.value), minTop1 = parseFloat(ui.minTop1.value);
    const keep = [];
    cands.forEach((c, i) => {
      const lat = dev.lat[i];
      if (lat !== null && c.top1 !== null && lat <= maxLat && c.top1 >= minTop1) keep.push(i);
    });
    return keep;
  }

  function stages(values, depths) {
    return depths.map((d, s) => values.slice(4 * s, 4 * s + d).join("")).join("/");
  }

  function hoverText(i) {
    const c = cands[i], m = dev.measured[i];
    const lines = [
      `<b>${c.id}</b>  r ${c.r} px, depths ${c.d.join("-")}`,
      `top-1 ${fmt(c.top1, 2)} %, MACs ${fmt(c.macs, 1)} M`,
      `predicted ${fmt(dev.lat[i], 2)} ms on ${esc(dev.key)}` +
        (dev.lo ? ` (${Math.round(dev.coverage * 100)}% interval ${fmt(dev.lo[i], 2)}\u2013${fmt(dev.hi[i], 2)})` : ""),
    ];
    if (dev.in_run && dev.now) lines.push(`current predictor: ${fmt(dev.now[i], 2)} ms`);
    lines.push(m
      ? `measured ${fmt(m.ms, 2)} ms (${esc(m.runtime)}, ${esc(m.at.slice(0, 10))}${m.flags.length ? ", " + esc(m.flags.join(" ")) : ""})`
      : `not measured on ${esc(dev.key)}`);
    if (dev.verified[i] !== null) lines.push(`verified on the board ${fmt(dev.verified[i], 2)} ms (ofa2-edge verify)`);
    lines.push(`kernels ${stages(c.ks, c.d)}, expand ${stages(c.e, c.d)}`);
    return lines.join("<br>");
  }

  function drawPareto(keep) {
    const inKeep = new Set(keep);
    const rest = cands.map((_, i) => i).filter((i) => !inKeep.has(i) && dev.lat[i] !== null);
    const measured = keep.filter((i) => dev.measured[i]);
    const verified = keep.filter((i) => dev.verified[i] !== null);
    const frontier = cands.map((_, i) => i).filter((i) => dev.frontier[i]).sort((a, b) => dev.lat[a] - dev.lat[b]);
    const pick = (idx, f) => idx.map(f);
    const traces = [
      { name: "filtered out", meta: "rest", type: "scatter", mode: "markers", ids: pick(rest, (i) => cands[i].id),
        x: pick(rest, (i) => dev.lat[i]), y: pick(rest, (i) => cands[i].top1), text: pick(rest, hoverText),
        hovertemplate: "%{text}<extra></extra>", marker: { color: "#c8ccd0", size: 6 } },
      { name: "accuracy-latency front", meta: "frontier", type: "scatter", mode: "lines", line: { shape: "hv", color: "#8c959f", dash: "dot" },
        x: pick(frontier, (i) => dev.lat[i]), y: pick(frontier, (i) => cands[i].top1), hoverinfo: "skip" },
      { name: "passing", meta: "pass", type: "scatter", mode: "markers", ids: pick(keep, (i) => cands[i].id),
        x: pick(keep, (i) => dev.lat[i]), y: pick(keep, (i) => cands[i].top1), text: pick(keep, hoverText),
        hovertemplate: "%{text}<extra></extra>",
        marker: { size: 8, color: pick(keep, (i) => cands[i].macs), colorscale: "Viridis", showscale: keep.length > 0,
                  colorbar: { title: { text: "MACs (M)" } } },
        error_x: dev.lo ? { type: "data", symmetric: false, array: pick(keep, (i) => dev.hi[i] - dev.lat[i]),
                            arrayminus: pick(keep, (i) => dev.lat[i] - dev.lo[i]), color: "#8c959f", thickness: 1, width: 0 }
                        : { visible: false } },
      { name: "measured", meta: "measured", type: "scatter", mode: "markers", ids: pick(measured, (i) => cands[i].id),
        x: pick(measured, (i) => dev.measured[i].ms), y: pick(measured, (i) => cands[i].top1), text: pick(measured, hoverText),
        hovertemplate: "%{text}<extra></extra>", marker: { symbol: "x", size: 9, color: "#cf222e" } },
      { name: "verified on the board", meta: "verified", type: "scatter", mode: "markers", ids: pick(verified, (i) => cands[i].id),
        x: pick(verified, (i) => dev.verified[i]), y: pick(verified, (i) => cands[i].top1), text: pick(verified, hoverText),
        hovertemplate: "%{text}<extra></extra>", marker: { symbol: "diamond-open", size: 10, color: "#8250df" } },
    ];
    const ePass = ensPassing(), eRows = ensHere();
    if (eRows.length) {
      const ePassIds = new Set(ePass.map((r) => r.id));
      const eRest = eRows.filter((r) => !ePassIds.has(r.id));
      traces.push(
        { name: "ensembles (filtered out)", meta: "ens-rest", type: "scatter", mode: "markers", ids: eRest.map((r) => r.id),
          x: eRest.map((r) => r.lat), y: eRest.map((r) => r.top1), text: eRest.map(ensHover), hovertemplate: "%{text}<extra></extra>",
          marker: { symbol: "diamond-open", size: 8, color: "#d4a72c" } },
        { name: `ensembles (${ens.mode})`, meta: "ens-pass", type: "scatter", mode: "markers+lines", line: { shape: "hv", color: "#bf8700", width: 1 },
          ids: ePass.map((r) => r.id), x: ePass.map((r) => r.lat), y: ePass.map((r) => r.top1), text: ePass.map(ensHover),
          hovertemplate: "%{text}<extra></extra>", marker: { symbol: "diamond", size: 9, color: "#bf8700" } });
    }
    const maxLat = parseFloat(ui.maxLat.value), minTop1 = parseFloat(ui.minTop1.value);
    const line = { color: "#cf222e", width: 1, dash: "dash" };
    const layout = {
      margin: { t: 30, r: 10, b: 50, l: 60 }, hovermode: "closest", legend: { orientation: "h", y: 1.08 },
      xaxis: { title: { text: `latency on ${dev.key} (ms)` } }, yaxis: { title: { text: "top-1 (%)" } },
      shapes: cands.length === 0 ? [] : [
        { type: "line", xref: "x", yref: "paper", x0: maxLat, x1: maxLat, y0: 0, y1: 1, line },
        { type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: minTop1, y1: minTop1, line },
      ],
    };
    Plotly.react("pareto", traces, layout, plotConfig);
  }

  function cell(tr, text) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }

  function drawTable(keep) {
    const sorted = keep.slice().sort((a, b) =>
      cands[b].top1 - cands[a].top1 || dev.lat[a] - dev.lat[b] || (cands[a].id < cands[b].id ? -1 : 1));
    const rows = sorted.map((i, rank) => {
      const c = cands[i], m = dev.measured[i], tr = document.createElement("tr");
      tr.dataset.id = c.id;
      cell(tr, String(rank + 1));
      cell(tr, c.id);
      cell(tr, fmt(c.top1, 2));
      cell(tr, fmt(dev.lat[i], 2));
      cell(tr, dev.lo ? `${fmt(dev.lo[i], 2)}\u2013${fmt(dev.hi[i], 2)}` : "\u2013");
      cell(tr, m ? fmt(m.ms, 2) : "\u2013");
      cell(tr, fmt(dev.verified[i], 2));
      cell(tr, fmt(c.macs, 1));
      cell(tr, String(c.r));
      cell(tr, c.d.join("-"));
      cell(tr, dev.frontier[i] ? "yes" : "");
      cell(tr, c.gen === null || c.gen === undefined ? "" : String(c.gen));
      return tr;
    });
    ui.body.replaceChildren(...rows);
  }

  // One line on what `ofa2-edge verify` found for this device: interval coverage against
  // nominal, how often a `select` pick broke the limit that chose it, measured vs predicted HV.
  function drawVerification() {
    const v = dev.verification, el = $("verification");
    if (!v) {
      el.textContent = `Front not verified on ${dev.key} (ofa2-edge verify RUN --device ${dev.key}).`;
      el.dataset.state = "none";
      return;
    }
    const pct = (x) => (x === null || x === undefined ? "\u2013" : `${(100 * x).toFixed(0)} %`);
    const cov = Object.values(v.coverage).map((c) => `${pct(c.nominal)} interval holds ${pct(c.actual)} of ${c.n}`);
    const vio = Object.entries(v.violations).map(([k, x]) =>
      `${k === "point" ? "point pick" : "--safe " + k} ${pct(x.rate)} of ${x.judged}`);
    el.textContent = `Verified on ${dev.key}${v.replica ? " (replica " + v.replica + ")" : ""}: ${v.measured} of ` +
      `${v.members} members measured (${(v.created_at || "").slice(0, 10)}). Coverage: ${cov.join("; ")}. ` +
      `select picks over their limit: ${vio.join("; ")}. HV measured/predicted ${fmt(v.hv_ratio, 3)}.`;
    el.dataset.state = "verified";
  }

  function update() {
    ui.maxLatText.textContent = ui.maxLat.disabled ? "\u2013" : `${ui.maxLat.value} ms on ${dev.key}`;
    ui.minTop1Text.textContent = ui.minTop1.disabled ? "\u2013" : `${ui.minTop1.value} %`;
    const keep = passing();
    ui.count.textContent = `${keep.length} of ${cands.length} candidates pass`;
    ui.count.dataset.count = String(keep.length);
    const eRows = ensHere(), eCount = $("ens-count");
    eCount.hidden = eRows.length === 0;
    if (eRows.length) {
      const n = ensPassing().length;
      eCount.textContent = `${n} of ${eRows.length} ensembles pass`;
      eCount.dataset.count = String(n);
    }
    drawPareto(keep);
    drawTable(keep);
    drawVerification();
  }

  function selectDevice(index) {
    dev = data.devices[index];
    setRange(ui.maxLat, finite(dev.lat).concat(ensHere().map((r) => r.lat)), "max");
    update();
    drawHypervolume();
  }

  function drawHypervolume() {
    const hv = data.hypervolume;
    if (!hv || hv.gen.length === 0) {
      $("hv").hidden = true;
      $("hv-empty").hidden = false;
      return;
    }
    const text = hv.gen.map((_, k) => `generation ${hv.gen[k]}<br>${hv.n_evals[k]} evaluations<br>front size ${hv.front_size[k]}`);
    // The selected device's own 2-D hypervolume where the run recorded it (3+ objectives),
    // else the run's indicator (exact joint HV, or the mean of the 2-D ones: hv.indicator).
    const own = (hv.per_device || {})[dev.key];
    const title = own ? `2-D hypervolume, ${dev.key}` : (hv.indicator === "mean-2d-hypervolume" ? "mean 2-D hypervolume" : "hypervolume");
    Plotly.react("hv", [{ type: "scatter", mode: "lines", x: hv.gen, y: own || hv.hv, text,
      hovertemplate: "HV %{y:.6g}<br>%{text}<extra></extra>", line: { color: "#0969da" } }], {
      margin: { t: 10, r: 10, b: 50, l: 80 }, xaxis: { title: { text: "generation" } }, yaxis: { title: { text: title } },
    }, plotConfig);
    $("hv").dataset.curve = title;
  }

  data.devices.forEach((d, k) => ui.device.add(new Option(d.in_run ? d.key : `${d.key} (priced now)`, String(k))));
  ui.device.disabled = data.devices.length < 2;
  setRange(ui.minTop1, finite(cands.map((c) => c.top1)).concat(ens ? ens.rows.map((r) => r.top1) : []), "min");
  for (const input of [ui.maxLat, ui.minTop1]) {
    input.addEventListener("input", update);
    input.addEventListener("change", update);
  }
  ui.device.addEventListener("change", () => selectDevice(Number(ui.device.value)));
  selectDevice(0);
})();
