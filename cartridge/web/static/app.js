// Cartridge's web page: the overview (refreshed every few seconds from /api/overview),
// hand-drawn SVG charts, and a game against a stored model (/api/play). No libraries.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#2657a8", "#e53935", "#2e9d48", "#8e44ad", "#f39c12", "#16a085"];
const STAGES = ["early", "mid", "late"];
let data = null;

function $(id) { return document.getElementById(id); }
function el(tag, attrs = {}, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(x, digits = 0) { return x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toFixed(digits); }
function when(t) { return t ? new Date(t * 1000).toLocaleString() : "-"; }
function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

// -- charts -----------------------------------------------------------------------------
// series: [{name, points: [{x, y, err}], dots}]; every point is a <circle> carrying data-x and
// data-y (the plotted values), so what is drawn can be checked against the database (a
// series without `dots` over 120 points is drawn as a line only).
function chart(svg, series, { xTime = false, yMin, yMax } = {}) {
  const W = 400, H = 210, L = 46, R = 10, T = 10, B = 34;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const pts = series.flatMap(s => s.points);
  if (!pts.length) { svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data yet")); return; }
  let x0 = Math.min(...pts.map(p => p.x)), x1 = Math.max(...pts.map(p => p.x));
  let y0 = yMin ?? Math.min(...pts.map(p => p.y - (p.err || 0)));
  let y1 = yMax ?? Math.max(...pts.map(p => p.y + (p.err || 0)));
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.05; if (yMin === undefined) y0 -= pad; if (yMax === undefined) y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4, x = x0 + (x1 - x0) * i / 4;
    svg.append(el("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid" }));
    svg.append(el("text", { x: L - 4, y: sy(y) + 3, "text-anchor": "end" }, Math.abs(y1 - y0) < 5 ? y.toFixed(2) : y.toFixed(0)));
    svg.append(el("text", { x: sx(x), y: H - B + 14, "text-anchor": "middle" }, xTime ? clock(x) : x.toFixed(0)));
  }
  svg.append(el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.append(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const sorted = [...s.points].sort((a, b) => a.x - b.x);
    if (sorted.length > 1)
      svg.append(el("polyline", { points: sorted.map(p => `${sx(p.x)},${sy(p.y)}`).join(" "), fill: "none", stroke: color, "stroke-width": 1.5 }));
    if (series.length > 1) {
      svg.append(el("rect", { x: L + 8 + i * 100, y: H - 12, width: 8, height: 8, fill: color }));
      svg.append(el("text", { x: L + 19 + i * 100, y: H - 4 }, s.name));
    }
    if (sorted.length > 120 && !s.dots) return;  // a dense series reads better as a line alone
    for (const p of sorted) {
      if (p.err) svg.append(el("line", { x1: sx(p.x), x2: sx(p.x), y1: sy(p.y - p.err), y2: sy(p.y + p.err), stroke: color, "stroke-opacity": 0.5 }));
      const c = el("circle", { cx: sx(p.x), cy: sy(p.y), r: 3, fill: color, "data-series": s.name, "data-x": p.x, "data-y": p.y });
      c.append(el("title", {}, `${s.name}: ${fmt(p.y, 2)} at ${xTime ? when(p.x) : "step " + p.x}`));
      svg.append(c);
    }
  });
}

function xAxis() { return document.querySelector("input[name=xaxis]:checked").value; }

function drawCharts() {
  if (!data) return;
  const byTime = xAxis() === "time";
  const rated = data.ratings.filter(r => r.status === "ok");
  const x = r => byTime ? (r.published_at || r.evaluated_at) : r.step;
  chart($("chart-rating"), [{ name: "rating", dots: true, points: rated.filter(r => r.rating !== null).map(r => ({ x: x(r), y: r.rating, err: r.rating_error })) }], { xTime: byTime });
  for (const [id, key] of [["chart-search", "optimal_pct"], ["chart-policy", "policy_optimal_pct"]])
    chart($(id), STAGES.map(s => ({ name: s, dots: true, points: rated.filter(r => r[key][s] !== null).map(r => ({ x: x(r), y: r[key][s] })) })),
          { xTime: byTime, yMin: 0, yMax: 100 });
  chart($("chart-loss"), [
    { name: "at publication", dots: true, points: data.models.filter(m => m.loss !== null).map(m => ({ x: m.step, y: m.loss })) },
    { name: "live", points: data.live.loss.map(([step, loss]) => ({ x: step, y: loss })) },
  ]);
  chart($("chart-rate"), [{ name: "stored/s", points: data.live.stored_per_s.map(([t, r]) => ({ x: t, y: r })) }], { xTime: true, yMin: 0 });
}

// -- tables and cards ---------------------------------------------------------------------
function row(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const c of cells) {
    const td = document.createElement("td");
    if (typeof c === "number") td.className = "num";
    td.textContent = c === null || c === undefined ? "-" : c;
    tr.append(td);
  }
  return tr;
}

function stages(p) { return STAGES.map(s => fmt(p[s])).join("/"); }

function render() {
  $("env").textContent = data.env_id;
  $("updated").textContent = "updated " + clock(data.generated_at);
  $("errors").replaceChildren(...data.errors.map(e => Object.assign(document.createElement("div"), { textContent: e })));
  const newest = data.newest;
  $("newest").textContent = newest ? "v" + newest.version : "-";
  $("newest-sub").textContent = newest ? `step ${newest.step}, ${when(newest.created_at)}, loss ${fmt(newest.loss, 3)}` : "no model yet";
  const served = data.ratings.find(r => r.served);
  $("served").textContent = served ? served.version : "-";
  $("rating").textContent = served && served.rating !== null ? fmt(served.rating) : "-";
  $("rating-sub").textContent = served ? `± ${fmt(served.rating_error)}, search ${stages(served.optimal_pct)} %` : "not rated yet";
  const inst = data.live.instances;
  const trainer = inst.find(i => i.service === "trainer");
  $("trainer").textContent = trainer ? "step " + trainer.status.step : "-";
  $("trainer-sub").textContent = trainer ? `loss ${fmt(trainer.status.loss, 3)}, ${fmt(trainer.samples_per_position, 1)} samples per new position, replay ${trainer.status.replay_size}` : "not heard from";
  const ingest = inst.filter(i => i.service === "ingest");
  const rate = ingest.length && ingest.every(i => i.positions_per_s !== null) ? ingest.reduce((a, i) => a + i.positions_per_s, 0) : null;
  $("rate").textContent = fmt(rate);
  $("rate-sub").textContent = ingest.length ? ingest.reduce((a, i) => a + i.status.rows, 0) + " stored by ingest since it started" : "ingest not heard from";
  if (data.queues) {
    $("queue").textContent = data.queues.length ? data.queues[0].ready : "-";
    $("queue-sub").textContent = data.queues.map(q => `${q.name}: ${q.ready} ready${q.unacked === null ? "" : ", " + q.unacked + " unacked"}`).join("; ");
  } else { $("queue").textContent = "-"; $("queue-sub").textContent = "unknown"; }
  $("live-source").textContent = data.live_source ? "(" + data.live_source + ")" : "";

  const services = $("services").tBodies[0];
  services.replaceChildren(...inst.map(i => {
    const s = i.status;
    const model = s.model_version ?? s.version ?? null;
    const detail = i.service === "trainer" ? `loss ${fmt(s.loss, 3)}, window ${s.window_size}`
      : i.service === "ingest" ? `${s.rows} stored, ${s.dead_lettered} dead-lettered`
      : i.service === "evaluator" ? `rating ${fmt(s.rating)}, ${s.evaluated} evaluated`
      : `${s.games} games, ${s.unconfirmed} unconfirmed`;
    return row([i.service, i.name, i.problem ? "DOWN: " + i.problem : s.state, fmt(i.age_s) + " s ago",
                model === null ? null : "v" + model, i.positions_per_s === undefined ? null : fmt(i.positions_per_s, 1), detail],
               i.problem ? "down" : "");
  }));
  $("actors").tBodies[0].replaceChildren(...Object.entries(data.live.actor_models).map(([a, v]) => row([a, "v" + v])));

  const loss = Object.fromEntries(data.models.map(m => [m.version, m.loss]));
  $("ratings").tBodies[0].replaceChildren(...[...data.ratings].reverse().map(r => r.status !== "ok"
    ? row([r.version, r.step, when(r.published_at), r.status + ": " + r.reason, null, null, null, null, null, ""])
    : row([r.version, r.step, when(r.published_at),
           r.rating === null ? null : `${fmt(r.rating)} ± ${fmt(r.rating_error)}${r.rating_fitted ? "" : "*"}`,
           r.gain === null || r.gain === undefined ? null : `${r.gain >= 0 ? "+" : ""}${fmt(r.gain)} ± ${fmt(r.gain_error)}`, r.games,
           stages(r.optimal_pct), stages(r.policy_optimal_pct), fmt(loss[r.version], 3), r.served ? "served" : ""],
          r.served ? "served" : "")));
  $("ratings-note").hidden = !data.ratings.some(r => r.rating !== null && !r.rating_fitted);
  fillVersions();
  drawCharts();
}

async function refresh() {
  try {
    const reply = await fetch("/api/overview");
    data = await reply.json();
    render();
  } catch (e) {
    $("errors").replaceChildren(Object.assign(document.createElement("div"), { textContent: "cannot reach the server: " + e }));
  }
}

// -- play ---------------------------------------------------------------------------------
const game = { moves: "", done: true, busy: false, last: null };

function fillVersions() {
  const select = $("version");
  const have = [...select.options].map(o => Number(o.value));
  const versions = data.models.map(m => m.version);
  if (have.join() === [...versions].reverse().join()) return;
  const chosen = select.value;
  select.replaceChildren(...[...versions].reverse().map(v => Object.assign(document.createElement("option"), { value: v, textContent: "v" + v })));
  if (versions.includes(Number(chosen))) select.value = chosen;
  if (!$("sims").value) { $("sims").value = data.default_simulations; $("sims").max = data.max_simulations; }
  if (game.done) drawBoard();
}

function positionOf(moves) {  // the board after `moves`: cells[r][c] = 0, 1 (first player) or 2
  const { rows, cols, gravity } = data.board;
  const cells = Array.from({ length: rows }, () => Array(cols).fill(0));
  let last = null;
  [...moves].forEach((m, i) => {
    const a = Number(m) - 1;
    let r, c;
    if (gravity) { c = a; r = cells.findIndex(rw => rw[c] === 0); } else { r = Math.floor(a / cols); c = a % cols; }
    if (r >= 0) { cells[r][c] = i % 2 + 1; last = [r, c]; }
  });
  return { cells, last };
}

function drawBoard() {
  if (!data) return;
  const { rows, cols, gravity } = data.board, S = 56;
  const svg = $("board");
  svg.setAttribute("width", cols * S); svg.setAttribute("height", rows * S);
  svg.replaceChildren();
  const { cells, last } = positionOf(game.moves);
  for (let c = 0; c < cols; c++) {
    const g = el("g", { class: "col", "data-col": c + 1 });
    g.append(el("rect", { x: c * S, y: 0, width: S, height: rows * S, fill: "transparent", class: "hover" }));
    for (let r = 0; r < rows; r++) {
      const who = cells[r][c];
      const isLast = last && last[0] === r && last[1] === c;
      const circle = el("circle", { cx: c * S + S / 2, cy: (rows - 1 - r) * S + S / 2, r: S * 0.4,
        class: (who ? "p" + who : "cell") + (isLast ? " last" : ""), "data-row": r, "data-move": gravity ? c + 1 : r * cols + c + 1 });
      g.append(circle);
    }
    g.addEventListener("click", ev => {
      const target = ev.target.getAttribute("data-move");
      humanMove(gravity ? c + 1 : Number(target));
    });
    svg.append(g);
  }
}

function showProbabilities(p) {
  const { cols, gravity } = data.board;
  $("probs").replaceChildren(...(gravity ? p : []).map((x, i) => {
    const d = document.createElement("div");
    d.style.width = "56px";
    d.dataset.col = i + 1; d.dataset.p = x;
    d.innerHTML = `<div class="bar" style="height:${Math.round(x * 60)}px"></div>${(x * 100).toFixed(1)}%`;
    return d;
  }));
  if (!gravity) $("probs").textContent = p.map((x, i) => `${i + 1}: ${(x * 100).toFixed(1)}%`).join("  ");
}

async function ask() {  // the model is to move in game.moves
  game.busy = true;
  $("play-error").textContent = "";
  $("play-status").textContent = "the model is thinking…";
  const body = { version: Number($("version").value), sims: Number($("sims").value), moves: game.moves };
  try {
    const reply = await fetch("/api/play", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const answer = await reply.json();
    if (!reply.ok) {
      $("play-error").textContent = answer.error;
      $("play-status").textContent = "the server refused that move";
      game.moves = game.moves.slice(0, -1);  // take back what it refused
      return;
    }
    game.moves = answer.moves;
    if (answer.model_move !== undefined) {
      $("model-move").textContent = answer.model_move;
      $("model-value").textContent = (answer.value >= 0 ? "+" : "") + answer.value.toFixed(3);
      showProbabilities(answer.probabilities);
    }
    game.done = answer.done;
    $("play-status").textContent = answer.done ? "game over: " + answer.result : "your move";
  } catch (e) {
    $("play-error").textContent = "cannot reach the server: " + e;
  } finally {
    game.busy = false;
    $("moves").textContent = game.moves;
    drawBoard();
    $("play").dataset.state = game.done ? "over" : "yours";
  }
}

function humanMove(move) {
  if (game.busy || game.done) return;
  game.moves += String(move);
  drawBoard();
  $("play").dataset.state = "thinking";
  ask();
}

function newGame(modelStarts) {
  if (game.busy) return;
  game.moves = ""; game.done = false;
  $("model-move").textContent = "-"; $("model-value").textContent = "-"; $("probs").replaceChildren();
  $("moves").textContent = "";
  drawBoard();
  if (modelStarts) { $("play").dataset.state = "thinking"; ask(); }
  else { $("play-status").textContent = "your move"; $("play").dataset.state = "yours"; }
}

$("new-human").addEventListener("click", () => newGame(false));
$("new-model").addEventListener("click", () => newGame(true));
document.querySelectorAll("input[name=xaxis]").forEach(r => r.addEventListener("change", drawCharts));
refresh();
setInterval(refresh, 5000);
