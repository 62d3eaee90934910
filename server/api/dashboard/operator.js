// Operator actions: guarded config writes (override, experiments, rollouts), rollback from history,
// clearing cooldowns, users' preferred models. Loaded after app.js (uses api, el, $, when).
// Every config write sends the revision the forms were loaded at: if the configuration
// changed meanwhile, the server refuses (409) and nothing is overwritten.
"use strict";

const ops = { revision: 0, values: {} };

async function send(method, path, body) {
  const headers = { Accept: "application/json", "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const reply = await fetch(path, { method, headers, body: JSON.stringify(body) });
  const data = await reply.json().catch(() => null);
  if (!reply.ok) throw new HttpError(reply.status, data);
  return data;
}

function say(text, kind = "ok") {
  const box = $("action-message");
  box.textContent = text;
  box.className = `action-message ${kind}`;
  box.dataset.kind = kind;
}

function failed(error) {
  if (error.reason === "CONFIG_CONFLICT") {
    say(`${error.message} — press “reload” to see the current configuration.`, "conflict");
  } else {
    say(error.message, "error");
  }
}

async function loadForms() {
  const current = await api("/api/admin/config/current");
  ops.revision = Number(current.revision);
  ops.values = current.values;
  $("form-revision").textContent = String(ops.revision);
  const contexts = Object.keys(ops.values).filter((k) => k.startsWith("contexts/")).map((k) => k.slice(9));
  const models = Object.keys(ops.values).filter((k) => k.startsWith("models/")).map((k) => k.slice(7));
  $("ops-contexts").replaceChildren(...contexts.map((c) => el("option", { value: c })));
  $("ops-models").replaceChildren(...models.map((m) => el("option", { value: m })));
  renderExperimentActions();
  renderRolloutActions();
}

async function write(changes, note, done) {
  try {
    const reply = await send("POST", "/api/admin/config/apply", { changes, note, expected_revision: ops.revision });
    // The forms are re-read first: the message appears once what it describes is on screen
    // (an operator acting on it at once must not have the re-render replace their input).
    await loadForms();
    renderHistory();
    say(`${done} (revision ${reply.revision}).`);
  } catch (error) {
    failed(error);
  }
}

function renderExperimentActions() {
  const rows = Object.entries(ops.values).filter(([k]) => k.startsWith("experiments/")).map(([key, value]) => {
    const id = key.slice(12);
    const weights = value.variants.map((v) => el("input", { type: "number", min: "0", max: "100", value: String(v.weight ?? 0),
      "data-variant": v.id, "data-testid": `weight-${id}-${v.id}`, class: "weight", title: `${v.id}: ${v.model}` }));
    const enabled = value.enabled !== false;
    const save = el("button", { "data-testid": `weights-save-${id}` }, "save weights");
    save.onclick = () => {
      const variants = value.variants.map((v, i) => ({ ...v, weight: Number(weights[i].value) }));
      write([{ key, value: { ...value, variants } }], $("experiment-note").value, `Weights of ${id} changed`);
    };
    const toggle = el("button", { "data-testid": `experiment-toggle-${id}` }, enabled ? "pause" : "resume");
    toggle.onclick = () => write([{ key, value: { ...value, enabled: !enabled } }], $("experiment-note").value,
      `Experiment ${id} ${enabled ? "paused" : "resumed"}`);
    const stop = el("button", { "data-testid": `experiment-stop-${id}` }, "stop");
    stop.onclick = () => write([{ key, value: { ...value, end: new Date().toISOString() } }], $("experiment-note").value,
      `Experiment ${id} stopped`);
    return el("tr", { "data-testid": "experiment-action" }, el("td", {}, id), el("td", {}, value.context),
      el("td", {}, enabled ? "enabled" : "paused"), el("td", {}, ...weights), el("td", {}, save, toggle, stop));
  });
  $("experiment-actions").replaceChildren(rows.length ? table(["experiment", "context", "state", "weights", ""], rows, { class: "compact" })
    : empty("No experiments yet.", "experiment-actions-empty"));
}

// "1:3600:500, 10, 100" → [{percent: 1, min_seconds: 3600, min_calls: 500}, {percent: 10}, ...]
function parseSteps(text) {
  return text.split(",").map((part) => part.trim()).filter(Boolean).map((part) => {
    const [percent, seconds, calls] = part.split(":").map(Number);
    const step = { percent };
    if (seconds) step.min_seconds = seconds;
    if (calls) step.min_calls = calls;
    return step;
  });
}

// "ERROR_RATE+0.02, P95_LATENCY_MS*0.25, QUALITY-0.05" → guardrails with their bound.
function parseGuardrails(text) {
  const bounds = { "+": "max_increase", "*": "max_relative_increase", "-": "max_decrease" };
  return text.split(",").map((part) => part.trim()).filter(Boolean).map((part) => {
    const match = /^([A-Z0-9_]+)\s*([+*-])\s*([0-9.]+)$/.exec(part);
    if (!match) return { metric: part };  // the server names what is wrong with it
    return { metric: match[1], [bounds[match[2]]]: Number(match[3]) };
  });
}

async function rolloutAction(id, action, extra = {}) {
  const note = $("rollout-note").value;
  try {
    const reply = await send("POST", `/api/admin/rollouts/${encodeURIComponent(id)}/action`,
      { action, note, expected_revision: ops.revision, ...extra });
    const share = reply.percent === null || reply.percent === undefined ? "" : `, candidate at ${reply.percent}%`;
    await loadForms();  // as in write(): the message last
    renderHistory();
    say(`Rollout ${id}: ${action} done — ${reply.state}${share} (revision ${reply.revision}).`);
  } catch (error) {
    failed(error);
  }
}

function renderRolloutActions() {
  const rows = Object.entries(ops.values).filter(([k]) => k.startsWith("rollouts/")).map(([key, value]) => {
    const id = key.slice(9);
    const progress = ops.values[`runtime/rollouts/${id}`] || {};
    const enabled = value.enabled !== false;
    const state = enabled ? (progress.state || "PENDING") : "STOPPED";
    const steps = value.steps || [];
    const stepIndex = progress.step || 0;
    const share = enabled ? (progress.percent ?? (steps[stepIndex] || {}).percent ?? 0) : 0;
    const button = (action, label) => el("button", { type: "button", "data-testid": `rollout-${action}-${id}` }, label);
    const pause = button("pause", "pause");
    pause.onclick = () => rolloutAction(id, "pause");
    const resume = button("resume", "resume");
    resume.onclick = () => rolloutAction(id, "resume");
    const stop = button("stop", "stop");
    stop.onclick = () => rolloutAction(id, "stop");
    const stepSelect = el("select", { "data-testid": `rollout-step-select-${id}` },
      ...steps.map((s, i) => el("option", { value: String(i), ...(i === stepIndex ? { selected: "" } : {}) }, `${i + 1}: ${s.percent}%`)));
    const goStep = button("step", "go to step");
    goStep.onclick = () => rolloutAction(id, "step", { step: Number(stepSelect.value) });
    const percent = el("input", { type: "number", min: "0", max: "100", value: String(share), class: "weight",
      "data-testid": `rollout-percent-${id}` });
    const setPercent = button("percent-set", "set share");
    setPercent.onclick = () => rolloutAction(id, "percent", { percent: Number(percent.value) });
    const controls = enabled ? [pause, resume, stop, stepSelect, goStep, percent, setPercent] : [];
    return el("tr", { "data-testid": "rollout-action", "data-rollout": id, "data-state": state },
      el("td", {}, id), el("td", {}, value.context), el("td", {}, value.candidate), el("td", {}, state),
      el("td", { class: "num" }, `${share}%`), el("td", {}, ...controls));
  });
  $("rollout-actions").replaceChildren(rows.length
    ? table(["rollout", "context", "candidate", "state", { label: "share", num: 1 }, ""], rows, { class: "compact" })
    : empty("No rollouts yet.", "rollout-actions-empty"));
}

function diffLines(before, after) {
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  const lines = [];
  for (const key of keys) {
    if (before[key] === after[key]) continue;
    lines.push(`--- ${key}`);
    if (key in before) lines.push(`- ${before[key]}`);
    if (key in after) lines.push(`+ ${after[key]}`);
  }
  return lines.join("\n") || "no difference";
}

async function showDiff(from, to) {
  try {
    const [a, b] = await Promise.all([api(`/api/admin/config/at?revision=${from}`), api(`/api/admin/config/at?revision=${to}`)]);
    $("history-diff").textContent = `revision ${a.revision} → ${b.revision}\n${diffLines(a.values_json, b.values_json)}`;
  } catch (error) {
    failed(error);
  }
}

async function rollback(revision, note) {
  try {
    const reply = await send("POST", "/api/admin/config/rollback", { revision, note, expected_revision: ops.revision });
    await loadForms();  // as in write(): the message last
    renderHistory();
    say(reply.changed_keys ? `Rolled back ${reply.changed_keys} key(s) to revision ${revision} (revision ${reply.revision}).`
      : `Nothing to do: the configuration already equals revision ${revision}.`);
  } catch (error) {
    failed(error);
  }
}

async function renderHistory() {
  const { changes, oldest_revision: oldest } = await api("/api/admin/config/history?limit=50");
  $("history-oldest").textContent = String(oldest);
  const rows = changes.map((c) => {
    const diff = el("button", { "data-testid": "history-diff-button" }, "diff");
    diff.onclick = () => showDiff(Number(c.revision) - 1, c.revision);
    const undo = el("button", { "data-testid": "history-undo", title: `restore the configuration of revision ${Number(c.revision) - 1}` }, "roll back to before");
    undo.onclick = () => rollback(Number(c.revision) - 1, $("rollback-note").value || `undo ${c.key} (revision ${c.revision})`);
    return el("tr", { "data-testid": "history-row", "data-revision": c.revision, "data-key": c.key, "data-actor": c.actor },
      el("td", { class: "num" }, c.revision), el("td", {}, when(c.changed_at)), el("td", {}, c.actor), el("td", {}, c.key),
      el("td", { class: "msg" }, c.note || ""), el("td", {}, diff, undo));
  });
  $("history").replaceChildren(rows.length ? table([{ label: "revision", num: 1 }, "when", "who", "key", "note", ""], rows, { class: "compact" })
    : empty("No recorded changes yet.", "history-empty"));
}

function bindForms() {
  $("form-reload").onclick = async () => { await loadForms(); say(`Reloaded at revision ${ops.revision}.`); };
  $("override-form").onsubmit = (event) => {
    event.preventDefault();
    const context = $("override-context").value.trim();
    const value = { model: $("override-model").value.trim(), note: $("override-note").value };
    const hours = Number($("override-hours").value);
    if (hours > 0) value.expires = new Date(Date.now() + hours * 3600_000).toISOString();
    write([{ key: `overrides/${context}`, value }], $("override-note").value, `${value.model} pinned for ${context}`);
  };
  $("override-clear").onclick = () => {
    const context = $("override-context").value.trim();
    write([{ key: `overrides/${context}`, delete: true }], $("override-note").value, `Override of ${context} removed`);
  };
  $("experiment-form").onsubmit = (event) => {
    event.preventDefault();
    const variants = $("experiment-variants").value.split(",").map((part) => {
      const [id, rest] = part.trim().split("=");
      const [model, weight] = (rest || "").split(":");
      return { id, model, weight: Number(weight) };
    });
    const value = { context: $("experiment-context").value.trim(), variants, enabled: true, bucket_by: "USER" };
    write([{ key: `experiments/${$("experiment-id").value.trim()}`, value }], $("experiment-note").value, "Experiment created");
  };
  $("rollout-form").onsubmit = (event) => {
    event.preventDefault();
    const value = {
      context: $("rollout-context").value.trim(),
      candidate: $("rollout-candidate").value.trim(),
      steps: parseSteps($("rollout-steps").value),
      guardrails: parseGuardrails($("rollout-guardrails").value),
      on_breach: $("rollout-breach").value,
      enabled: true,
    };
    const id = $("rollout-id").value.trim();
    write([{ key: `rollouts/${id}`, value }], $("rollout-note").value, `Rollout ${id} of ${value.candidate} on ${value.context} created`);
  };
  $("cooldown-form").onsubmit = async (event) => {
    event.preventDefault();
    try {
      const reply = await send("POST", "/api/admin/cooldowns/clear", { subject: $("cooldown-subject").value.trim() });
      say(`Cooldown cleared: ${reply.cleared}.`);
    } catch (error) {
      failed(error);
    }
  };
  $("preference-lookup").onclick = async () => {
    try {
      const reply = await api(`/api/admin/users/${encodeURIComponent($("preference-user").value.trim())}/preferences`);
      $("preference-result").textContent = reply.preferences.length
        ? reply.preferences.map((p) => `${p.context || "(every context)"}: ${p.model_id}`).join("; ") : "no preference set";
    } catch (error) {
      failed(error);
    }
  };
  $("preference-form").onsubmit = async (event) => {
    event.preventDefault();
    try {
      const user = $("preference-user").value.trim();
      await send("PUT", `/api/admin/users/${encodeURIComponent(user)}/preferences`,
        { model_id: $("preference-model").value.trim(), tier: $("preference-tier").value.trim(), context: $("preference-context").value.trim() });
      say(`Preferred model of ${user} set.`);
      $("preference-lookup").click();
    } catch (error) {
      failed(error);
    }
  };
  $("rollback-form").onsubmit = (event) => {
    event.preventDefault();
    rollback(Number($("rollback-revision").value), $("rollback-note").value);
  };
  $("history-refresh").onclick = () => renderHistory().catch(failed);
}

async function startOperator() {
  bindForms();
  try {
    await loadForms();
    await renderHistory();
    document.body.dataset.operator = "ready";
  } catch (error) {
    if (error.status === 401) {
      // app.js shows the token form; try again once a token is given.
      $("token-form").addEventListener("submit", () => setTimeout(startOperator, 0), { once: true });
      return;
    }
    failed(error);
  }
}

startOperator();
