// The labelling page's logic: fetch the next pending query, show it, post the answer, repeat.
"use strict";

const token = new URLSearchParams(window.location.search).get("token") || "";
const $ = (sel) => document.querySelector(sel);
let current = null;      // the query on screen
let shownAt = 0;         // when it was shown (for the seconds taken)
let busy = false;        // an answer is on its way

async function api(path, body) {
  const options = { headers: { "X-Label-Token": token } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  return { status: response.status, data };
}

function showProgress(p) {
  if (!p) return;
  const elsewhere = p.elsewhere ? ` (${p.elsewhere} being answered elsewhere)` : "";
  $("#progress").textContent = `${p.mine} answered by you · ${p.answered} in all · ${p.pending} pending${elsewhere}`;
}

function render(query) {
  current = query;
  document.body.dataset.queryId = query ? String(query.id) : "";
  $("#question").classList.toggle("hidden", !query);
  $("#empty").classList.toggle("hidden", !!query);
  if (!query) return;
  $("#prompt").textContent = query.prompt;
  const pair = query.kind === "compare";
  $("#pair").classList.toggle("hidden", !pair);
  $("#pair-controls").classList.toggle("hidden", !pair);
  $("#single").classList.toggle("hidden", pair);
  $("#rating-controls").classList.toggle("hidden", pair);
  if (pair) {
    $("#side-left .text").textContent = query.sides[0].text;
    $("#side-right .text").textContent = query.sides[1].text;
  } else {
    $("#completion").textContent = query.completion;
    const controls = $("#rating-controls");
    controls.replaceChildren();
    for (let r = 1; r <= query.scale; r++) {
      const b = document.createElement("button");
      b.id = `btn-rate-${r}`;
      b.textContent = String(r);
      b.addEventListener("click", () => send(r));
      controls.appendChild(b);
    }
  }
  shownAt = performance.now();
}

async function loadNext() {
  const { status, data } = await api("/api/next");
  if (status !== 200) { $("#status").textContent = `error ${status}: ${data.error || "reload the page"}`; return; }
  showProgress(data.progress);
  render(data.query);
}

async function send(answer) {
  if (!current || busy) return;
  busy = true;
  const body = { query_id: current.id, answer, elapsed_s: (performance.now() - shownAt) / 1000 };
  if (current.kind === "compare") body.swapped = current.swapped;
  try {
    const { status, data } = await api("/api/answer", body);
    $("#status").textContent = status === 200 ? `saved: query ${current.id} → ${data.answer.choice}`
      : (data.error || `error ${status}`);
    await loadNext();
  } finally {
    busy = false;
  }
}

// side = "left" | "right": which displayed completion won; the server wants the stored key
function pick(side) {
  if (!current || current.kind !== "compare") return;
  send(current.sides[side === "left" ? 0 : 1].key);
}

async function undo() {
  if (busy) return;
  busy = true;
  try {
    const { data } = await api("/api/undo", {});
    $("#status").textContent = data.undone === null ? "nothing to undo" : `undone: query ${data.undone}`;
    await loadNext();
  } finally {
    busy = false;
  }
}

$("#btn-left").addEventListener("click", () => pick("left"));
$("#btn-right").addEventListener("click", () => pick("right"));
$("#btn-tie").addEventListener("click", () => send("tie"));
$("#btn-skip").addEventListener("click", () => send("skip"));
$("#btn-undo").addEventListener("click", undo);

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "u") { undo(); return; }
  if (!current) return;
  if (current.kind === "compare") {
    if (key === "a" || key === "arrowleft") pick("left");
    else if (key === "b" || key === "arrowright") pick("right");
    else if (key === "t") send("tie");
    else if (key === "s") send("skip");
  } else if (key === "s") {
    send("skip");
  } else if (/^[1-9]$/.test(key) && Number(key) <= current.scale) {
    send(Number(key));
  }
});

loadNext();
setInterval(() => { if (!current && !busy) loadNext(); }, 2000);
