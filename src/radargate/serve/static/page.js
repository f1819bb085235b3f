// The routing page: stream an answer and colour each generated token by the expert that weighed most.
// Plain browser JavaScript served by radargate itself: no CDN, no build step.
"use strict";

const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac"];
const $ = (id) => document.getElementById(id);
const state = { model: null, layers: [], experts: 0, gate: null, tokens: [] };

function colour(expert) {
  if (expert < PALETTE.length) return PALETTE[expert];
  return `hsl(${(expert * 137.5) % 360} 55% 55%)`;
}

function headers() {
  const key = $("api-key").value.trim();
  localStorage.setItem("radargate-api-key", key);
  const result = { "Content-Type": "application/json" };
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

async function connect() {
  try {
    const models = await getJSON("/v1/models");
    const routing = await getJSON("/v1/routing/layers");
    state.model = models.data[0].id;
    Object.assign(state, { layers: routing.layers, experts: routing.num_experts, gate: routing.gate });
    $("model").textContent = `${models.data[0].id} · ${models.data[0].description}`;
    const select = $("layer");
    select.length = 1;
    routing.layers.forEach((name, index) => select.add(new Option(name, String(index))));
    $("legend").innerHTML = "";
    for (let expert = 0; expert < state.experts; expert++) {
      const item = document.createElement("span");
      item.innerHTML = `<span class="swatch" style="background:${colour(expert)}"></span>expert ${expert}`;
      $("legend").append(item);
    }
    if (!state.experts) $("legend").textContent = "this model has no gate: nothing to colour";
    setStatus("");
  } catch (error) {
    setStatus(`cannot reach the API: ${error.message}`, true);
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

// Per token: the weights [layers][experts] averaged over layers, or one layer's row.
function weightsShown(routing) {
  const layer = $("layer").value;
  if (layer !== "mean") return routing.weights[Number(layer)];
  const sum = new Array(state.experts).fill(0);
  routing.weights.forEach((row) => row.forEach((value, expert) => { sum[expert] += value / routing.weights.length; }));
  return sum;
}

function leading(weights) {
  return weights.reduce((best, value, index) => (value > weights[best] ? index : best), 0);
}

function paint(span) {
  const routing = span._routing;
  if (!routing) return;
  const weights = weightsShown(routing);
  const expert = leading(weights);
  const total = weights.reduce((a, b) => a + b, 0) || 1;
  const share = weights[expert] / total;
  span.dataset.expert = String(expert);
  span.style.background = colour(expert) + Math.round(64 + 191 * share).toString(16).padStart(2, "0");
}

function tipText(span) {
  const routing = span._routing;
  const weights = weightsShown(routing);
  const where = $("layer").value === "mean" ? "average over layers" : state.layers[Number($("layer").value)];
  const header = routing.theta ? "expert  weight  rotation" : "expert  weight";
  const lines = [`token ${JSON.stringify(span.textContent)} (id ${span.dataset.tokenIds})`, where, header];
  weights.forEach((value, expert) => {
    let line = `${String(expert).padStart(6)}  ${value.toFixed(3)}`;
    if (routing.theta) {
      const layer = $("layer").value;
      const angles = layer === "mean"
        ? routing.theta.reduce((acc, row) => acc + row[expert] / routing.theta.length, 0)
        : routing.theta[Number(layer)][expert];
      line += `  ${(angles * 180 / Math.PI).toFixed(1).padStart(7)}°`;
    }
    lines.push(line);
  });
  return lines.join("\n");
}

function showTip(event) {
  const span = event.target.closest(".token");
  if (!span || !span._routing) return;
  const tip = $("tip");
  tip.textContent = tipText(span);
  tip.hidden = false;
  tip.style.left = `${event.clientX + 12}px`;
  tip.style.top = `${event.clientY + 12}px`;
}

function addPiece(choice) {
  const text = choice.text !== undefined ? choice.text : (choice.delta && choice.delta.content) || "";
  const routing = choice.routing || [];
  const ids = choice.token_ids || [];
  if (!ids.length && !text) return;
  const span = document.createElement("span");
  span.className = "token";
  span.textContent = text;
  span.dataset.tokenIds = ids.join(",");
  if (routing.length) {  // a piece holds one token, or a few whose text came out together: their mean
    span._routing = {
      weights: routing[0].weights.map((row, l) => row.map((_, e) =>
        routing.reduce((acc, r) => acc + r.weights[l][e], 0) / routing.length)),
      theta: routing[0].theta ? routing[0].theta.map((row, l) => row.map((_, e) =>
        routing.reduce((acc, r) => acc + r.theta[l][e], 0) / routing.length)) : null,
    };
    paint(span);
  }
  $("answer").append(span);
}

async function generate(event) {
  event.preventDefault();
  if (!state.model) await connect();
  const chat = $("mode").value === "chat";
  const body = {
    model: state.model, stream: true, max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value), return_routing: true, return_token_ids: true,
  };
  if (chat) body.messages = [{ role: "user", content: $("prompt").value }];
  else body.prompt = $("prompt").value;
  $("answer").innerHTML = "";
  $("send").disabled = true;
  setStatus("generating…");
  try {
    const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions",
                                 { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) {
      const error = await response.json();
      throw new Error(error.error ? error.error.message : response.statusText);
    }
    const count = await readEvents(response);
    setStatus(`${count} tokens`);
    $("answer").dataset.done = "true";
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    $("send").disabled = false;
  }
}

async function readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", count = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return count;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const event = JSON.parse(line.slice(6));
      if (event.error) throw new Error(event.error.message);
      for (const choice of event.choices) {
        count += (choice.token_ids || []).length;
        addPiece(choice);
      }
    }
  }
}

$("api-key").value = localStorage.getItem("radargate-api-key") || "";
$("ask").addEventListener("submit", generate);
$("api-key").addEventListener("change", connect);
$("layer").addEventListener("change", () => document.querySelectorAll(".token").forEach(paint));
$("answer").addEventListener("mousemove", showTip);
$("answer").addEventListener("mouseleave", () => { $("tip").hidden = true; });
connect();
