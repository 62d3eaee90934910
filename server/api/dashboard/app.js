// modelroute dashboard: plain JS over /api/admin/* (no build step, no CDN).
// Every number shown is also put in a data-value / data-testid attribute, so tests and
// scripts can read exactly what an operator sees.
"use strict";

const REFRESH_MS = 10_000;
const DAYS = 7;
const TOKEN_KEY = "modelroute.adminToken";
const PALETTE = ["#3559e0", "#12b76a", "#f79009", "#ee46bc", "#0ba5ec", "#7a5af8", "#f04438", "#667085"];
const charts = {};

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.reason = body && body.error ? body.error.reason : "";
  }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const reply = await fetch(path, { headers });
  const body = await reply.json().catch(() => null);
  if (!reply.ok) throw new HttpError(reply.status, body);
  return body;
}

// --- small DOM helpers ---------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}
function empty(text, testid) {
  return el("p", { class: "empty", "data-testid": testid }, text);
}
function table(headers, rows, attrs = {}) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { class: h.num ? "num" : "" }, h.label ?? h)));
  return el("table", attrs, el("thead", {}, head), el("tbody", {}, ...rows));
}
const usd = (v) => `$${v < 1 && v > 0 ? v.toFixed(4) : v.toFixed(2)}`;
const pct = (v) => `${(100 * v).toFixed(1)}%`;
const int = (v) => Number(v).toLocaleString("en-US");
const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–");
function setValue(id, value, text) {
  $(id).dataset.value = String(value);
  $(id).textContent = text;
}
function chart(id, config) {
  if (!window.Chart) return; // vendor file missing: numbers and tables still work
  if (charts[id]) charts[id].destroy();
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options);
  charts[id] = new Chart($(id), config);
}
function dayStart(offset) {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  d.setUTCDate(d.getUTCDate() - offset);
  return d;
}

// --- sections ------------------------------------------------------------------------------

async function renderUsage() {
  // Cost per day stacked by model: one by-model summary per UTC day (the API groups by one
  // dimension at a time). DAYS requests per refresh stay well inside the rate limit.
  const days = [];
  for (let i = DAYS - 1; i >= 0; i--) days.push([dayStart(i), dayStart(i - 1)]);
  const from = days[0][0].toISOString();
  const perDay = await Promise.all(
    days.map(([a, b]) => api(`/api/admin/llm-usage?group_by=model&from=${a.toISOString()}&to=${b.toISOString()}`)),
  );
  const [byModel, byContext] = await Promise.all([
    api(`/api/admin/llm-usage?group_by=model&from=${from}`),
    api(`/api/admin/llm-usage?group_by=context&from=${from}`),
  ]);

  const rows = byModel.rows;
  const calls = rows.reduce((s, r) => s + r.calls, 0);
  const errors = rows.reduce((s, r) => s + r.errors, 0);
  const cost = rows.reduce((s, r) => s + r.cost_usd, 0);
  const tokens = rows.reduce((s, r) => s + r.input_tokens + r.output_tokens, 0);
  setValue("total-cost", cost.toFixed(6), usd(cost));
  setValue("total-calls", calls, int(calls));
  setValue("error-rate", calls ? (errors / calls).toFixed(6) : 0, calls ? pct(errors / calls) : "–");
  setValue("total-tokens", tokens, int(tokens));
  document.querySelector("[data-testid=usage-empty]").hidden = calls > 0;
  document.querySelector("[data-testid=tokens-empty]").hidden = calls > 0;

  const models = rows.map((r) => r.key);
  chart("cost-chart", {
    type: "bar",
    data: {
      labels: days.map(([a]) => a.toISOString().slice(5, 10)),
      datasets: models.map((model, i) => ({
        label: model,
        backgroundColor: PALETTE[i % PALETTE.length],
        data: perDay.map((d) => (d.rows.find((r) => r.key === model) || { cost_usd: 0 }).cost_usd),
      })),
    },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
  chart("tokens-chart", {
    type: "bar",
    data: {
      labels: byContext.rows.map((r) => r.key),
      datasets: [
        { label: "input", backgroundColor: PALETTE[0], data: byContext.rows.map((r) => r.input_tokens) },
        { label: "output", backgroundColor: PALETTE[1], data: byContext.rows.map((r) => r.output_tokens) },
      ],
    },
    options: { indexAxis: "y", scales: { x: { stacked: true }, y: { stacked: true } } },
  });
  chart("latency-chart", {
    type: "bar",
    data: {
      labels: models,
      datasets: [
        { label: "p95 latency (ms)", backgroundColor: PALETTE[0], yAxisID: "ms", data: rows.map((r) => r.latency_p95_ms) },
        { label: "error rate (%)", backgroundColor: PALETTE[6], yAxisID: "err", data: rows.map((r) => (r.calls ? (100 * r.errors) / r.calls : 0)) },
      ],
    },
    options: {
      scales: {
        ms: { position: "left", beginAtZero: true },
        err: { position: "right", beginAtZero: true, suggestedMax: 5, grid: { drawOnChartArea: false } },
      },
    },
  });
  $("model-table").replaceChildren(
    ...Array.from(table(
      ["model", { label: "calls", num: 1 }, { label: "errors", num: 1 }, { label: "p95 ms", num: 1 }, { label: "cost", num: 1 }],
      rows.map((r) =>
        el("tr", { "data-testid": `model-row-${r.key}`, "data-calls": r.calls, "data-cost": r.cost_usd },
          el("td", {}, r.key), el("td", { class: "num" }, int(r.calls)), el("td", { class: "num" }, int(r.errors)),
          el("td", { class: "num" }, r.latency_p95_ms.toFixed(0)), el("td", { class: "num" }, usd(r.cost_usd))),
      ),
    ).childNodes),
  );
}

async function renderExperiments() {
  const { experiments } = await api("/api/admin/experiments");
  const box = $("experiments");
  if (!experiments.length) {
    box.replaceChildren(empty("No experiments configured — put one under experiments/<id> in etcd " +
      "(see docs/contract.md, “etcd keys and values”) to compare models on live traffic.", "experiments-empty"));
    return;
  }
  const blocks = await Promise.all(experiments.map(async (exp) => {
    const title = el("div", { class: "title" }, `${exp.experiment_id} `,
      el("span", { class: "badge" }, exp.context), " ",
      el("span", { class: "badge", "data-testid": `experiment-state-${exp.experiment_id}` }, exp.running ? "running" : "stopped"));
    let results;
    try {
      results = await api(`/api/admin/experiments/${encodeURIComponent(exp.experiment_id)}/results`);
    } catch (error) {
      return el("div", { class: "experiment" }, title, empty(`Results unavailable: ${error.message}`, "experiment-error"));
    }
    const rows = results.variants.map((v, i) => {
      const usage = v.usage || { calls: 0, latency_p95_ms: 0, cost_usd: 0 };
      const marker = i === 0 ? el("span", {}, "control")
        // The always-valid (sequential) test: safe to look at on every refresh.
        : v.significant_sequential ? el("span", { class: "sig", "data-testid": `significant-${exp.experiment_id}-${v.variant_id}`, title: "significant at 5% vs control (always-valid sequential test: stays valid however often you look)" }, "★ significant")
        : el("span", { title: v.significant ? "fixed-horizon p < 5%, but not yet significant under continuous monitoring" : "" }, "n.s.");
      return el("tr", { "data-testid": `variant-${exp.experiment_id}-${v.variant_id}`, "data-calls": usage.calls, "data-significant": String(Boolean(v.significant_sequential)) },
        el("td", {}, v.variant_id), el("td", {}, v.model_id), el("td", { class: "num" }, `${v.weight}%`),
        el("td", { class: "num" }, int(usage.calls)), el("td", { class: "num" }, pct(v.error_rate)),
        el("td", { class: "num" }, i ? v.error_rate_p_value.toFixed(3) : "–"),
        el("td", { class: "num", "data-testid": `seq-p-${exp.experiment_id}-${v.variant_id}` }, i ? (v.error_rate_sequential_p_value ?? 1).toFixed(3) : "–"),
        el("td", { class: "num" }, usage.latency_p95_ms.toFixed(0)),
        el("td", { class: "num" }, v.mean_quality_score ? v.mean_quality_score.toFixed(2) : "–"), el("td", {}, marker));
    });
    const srm = results.sample_ratio_mismatch
      ? el("div", { class: "srm", "data-testid": `srm-${exp.experiment_id}` }, `Sample ratio mismatch (p=${results.sample_ratio_p_value.toExponential(1)}): assignment is broken, do not trust the comparison.`)
      : "";
    return el("div", { class: "experiment" }, title, srm, table(
      ["variant", "model", { label: "weight", num: 1 }, { label: "calls", num: 1 }, { label: "errors", num: 1 },
        { label: "p (err, one look)", num: 1 }, { label: "p (err, always-valid)", num: 1 }, { label: "p95 ms", num: 1 }, { label: "quality", num: 1 }, ""],
      rows, { class: "compact" }));
  }));
  box.replaceChildren(...blocks);
}

function gauge(label, used, limit, text, testid) {
  const ratio = limit ? Math.min(1, used / limit) : 0;
  const bar = el("div", { class: `bar ${ratio >= 1 ? "bad" : ratio >= 0.8 ? "warn" : ""}` }, el("span"));
  bar.firstChild.style.width = `${(100 * ratio).toFixed(1)}%`;
  return el("div", { class: "gauge", "data-testid": testid, "data-ratio": ratio.toFixed(4) }, el("span", {}, label), bar, el("span", {}, text));
}

function bound(value) {
  return Math.abs(value) >= 1e300 ? (value < 0 ? "−∞" : "+∞") : value.toPrecision(3);
}

async function renderRollouts() {
  const { rollouts } = await api("/api/admin/rollouts");
  const box = $("rollouts");
  if (!rollouts.length) {
    box.replaceChildren(empty("No rollouts configured — put one under rollouts/<id> in etcd " +
      "(see docs/contract.md, “etcd keys and values”), or create one under “Operator actions”, " +
      "to ramp a model up behind guardrails.", "rollouts-empty"));
    return;
  }
  box.replaceChildren(...rollouts.map((r) => {
    const title = el("div", { class: "title" }, `${r.rollout_id} `,
      el("span", { class: "badge" }, r.context), " ",
      el("span", { class: "badge" }, `${r.baseline_model} → ${r.candidate}`), " ",
      el("span", { class: `badge state-${r.state.toLowerCase()}`, "data-testid": `rollout-state-${r.rollout_id}` }, r.state));
    const summary = el("div", { "data-testid": `rollout-share-${r.rollout_id}`, "data-percent": r.percent },
      `step ${r.step + 1}/${r.steps} · candidate share ${r.percent}% · calls: candidate ${int(r.candidate_calls)}, baseline ${int(r.baseline_calls)}`);
    const guardrails = r.guardrails.length ? table(
      ["guardrail", { label: "candidate", num: 1 }, { label: "baseline", num: 1 }, { label: "excess", num: 1 }, "always-valid 95% interval", ""],
      r.guardrails.map((g) => el("tr", { "data-testid": `guardrail-${r.rollout_id}-${g.metric}`, "data-breached": String(g.breached) },
        el("td", {}, `${g.metric} ${g.bound}`), el("td", { class: "num" }, g.candidate_value.toPrecision(3)),
        el("td", { class: "num" }, g.baseline_value.toPrecision(3)), el("td", { class: "num" }, g.estimate.toPrecision(3)),
        el("td", {}, `[${bound(g.interval_low)}, ${bound(g.interval_high)}]`),
        el("td", { class: g.breached ? "sev-critical" : "" }, g.breached ? "breached" : "ok"))), { class: "compact" })
      : empty("No guardrails.", `guardrails-empty-${r.rollout_id}`);
    const decisions = table(["when", "action", { label: "share", num: 1 }, "why"], r.decisions.map((d) =>
      el("tr", { "data-testid": "rollout-decision", "data-action": d.action },
        el("td", {}, when(d.time)), el("td", {}, d.action), el("td", { class: "num" }, `${d.percent}%`),
        el("td", { class: "msg" }, d.detail))), { class: "compact" });
    return el("div", { class: "experiment", "data-testid": `rollout-${r.rollout_id}` }, title, summary, guardrails, decisions);
  }));
}

async function renderStatus() {
  const status = await api("/api/admin/config/status");
  $("revision").textContent = status.config_revision;
  $("etcd").textContent = status.etcd_connected ? "connected" : `DISCONNECTED since ${when(status.degraded_since)}`;
  $("etcd").className = status.etcd_connected ? "" : "sev-critical";
  $("last-reload").textContent = when(status.last_reload);
  $("key-counts").textContent = Object.entries(status.key_counts).map(([k, v]) => `${v} ${k}`).join(", ") || "none";
  $("env-overrides").textContent = status.env_overrides.map((o) => `${o.variable}=${o.model_id}`).join(", ") || "none";

  $("rejected").replaceChildren(status.rejected_keys.length
    ? table(["key", "error", { label: "revision", num: 1 }, "in force"], status.rejected_keys.map((k) =>
      el("tr", { "data-testid": "rejected-key", "data-key": k.key },
        el("td", {}, k.key), el("td", { class: "msg" }, k.error), el("td", { class: "num" }, k.revision),
        el("td", {}, k.previous_value_in_force ? "previous value" : "key ignored"))), { class: "compact" })
    : empty("Every value in etcd is valid.", "rejected-empty"));

  const gauges = [
    ...status.quotas.map((q) => gauge(`${q.provider} · ${q.limit.replaceAll("_", " ")}`, q.limit_value - q.remaining,
      q.limit_value, `${int(q.limit_value - q.remaining)} / ${int(q.limit_value)}`, `quota-${q.provider}-${q.limit}`)),
    ...status.budgets.map((b) => gauge(`${b.context} · budget/day`, b.spent_usd, b.limit_usd,
      `${usd(b.spent_usd)} / ${usd(b.limit_usd)}`, `budget-${b.context}`)),
  ];
  $("quotas").replaceChildren(...(gauges.length ? gauges
    : [empty("No provider limits or context budgets configured (providers/<name>, contexts/<name>.budget).", "quotas-empty")]));
}

async function renderCooldowns() {
  const { cooldowns } = await api("/api/admin/cooldowns");
  setValue("cooldown-count", cooldowns.length, String(cooldowns.length));
  $("cooldowns").replaceChildren(cooldowns.length
    ? table(["subject", "until"], cooldowns.map((c) => el("tr", { "data-testid": "cooldown", "data-subject": c.subject },
      el("td", {}, c.subject), el("td", {}, when(c.until)))), { class: "compact" })
    : empty("No model or provider is cooling down.", "cooldowns-empty"));
}

async function renderAlerts() {
  const { alerts } = await api("/api/admin/alerts?limit=20");
  $("alerts").replaceChildren(alerts.length
    ? table(["raised", "severity", "kind", "subject", "message"], alerts.map((a) =>
      el("tr", { "data-testid": "alert", "data-kind": a.kind, "data-alert-id": a.alert_id },
        el("td", {}, when(a.created_at)), el("td", { class: `sev-${a.severity}` }, a.severity),
        el("td", {}, a.kind), el("td", {}, a.subject), el("td", { class: "msg" }, a.message))), { class: "compact" })
    : empty("No alerts — quota, budget, cooldown, config and etcd problems show up here.", "alerts-empty"));
}

// --- refresh loop --------------------------------------------------------------------------

function showBanner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

async function refresh() {
  const sections = { usage: renderUsage, experiments: renderExperiments, rollouts: renderRollouts, status: renderStatus, cooldowns: renderCooldowns, alerts: renderAlerts };
  const results = await Promise.allSettled(Object.values(sections).map((render) => render()));
  const failures = results.map((r, i) => [Object.keys(sections)[i], r]).filter(([, r]) => r.status === "rejected");
  if (failures.some(([, r]) => r.reason.status === 401)) {
    $("token-form").hidden = false;
    $("token-error").textContent = sessionStorage.getItem(TOKEN_KEY) ? "token rejected" : "";
    showBanner("");
    return;
  }
  $("token-form").hidden = true;
  showBanner(failures.map(([name, r]) => r.reason.status === 501
    ? `${name}: not available in this server version`
    : `${name}: ${r.reason.message}`).join(" · "));
  $("updated").textContent = new Date().toLocaleTimeString();
  document.body.dataset.loaded = "true";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
