// The labelling page's logic: fetch the next pending query, show it, post the answer, repeat.
"use strict";

const token = new URLSearchParams(window.location.search).get("token") || "";
const $ = (sel) => document.querySelector(sel);
let current = null;      // the query on screen
let shownAt = 0;         // when it was shown (for the seconds taken)
let busy = false;        // an answer is on its way
let lastSaved = null;    // what the status line said about the last answer the server confirmed

// One id per tab (kept across reloads of the tab): two tabs of the same labeller are shown different queries.
function tabSession() {
  let id = null;
  try { id = window.sessionStorage.getItem("rlhf-gym-session"); } catch (e) { /* storage off: one id per load */ }
  if (!id) {
    const bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    try { window.sessionStorage.setItem("rlhf-gym-session", id); } catch (e) { /* ignore */ }
  }
  return id;
}
const session = tabSession();

// Untrusted text is shown as it is stored: control characters, escape sequences, bidi overrides and other
// invisible format characters appear as highlighted escapes (\x1b, \u202e), never applied. Same rule as
// rlhf_gym/live/visible.py.
const HIDDEN = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}\u034f\u115f\u1160\u3164\uffa0]/gu;
function escapeOf(ch) {
  const code = ch.codePointAt(0);
  if (code < 0x100) return "\\x" + code.toString(16).padStart(2, "0");
  if (code < 0x10000) return "\\u" + code.toString(16).padStart(4, "0");
  return "\\U" + code.toString(16).padStart(8, "0");
}
function showText(element, text) {
  element.replaceChildren();
  const source = String(text).replace(/\r\n/g, "\n");
  let last = 0;
  for (const match of source.matchAll(HIDDEN)) {
    const ch = match[0];
    if (ch === "\n" || ch === "\t") continue;
    element.append(source.slice(last, match.index));
    const mark = document.createElement("span");
    mark.className = "ctl";
    mark.textContent = escapeOf(ch);
    mark.title = "a control or invisible character in the text";
    element.append(mark);
    last = match.index + ch.length;
  }
  element.append(source.slice(last));
}

// status 0: the server could not be reached at all
async function api(path, body) {
  const options = { headers: { "X-Label-Token": token, "X-Label-Session": session } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    return { status: 0, data: {} };
  }
  const data = await response.json().catch(() => ({}));
  return { status: response.status, data };
}

function unreachable(saved) {
  const last = saved === null ? "" : saved ? " Your last answer was saved." : " Your last answer was NOT saved.";
  setStatus(`Server not reachable — the labelling server stopped.${last} Start it again (rlhf-gym label --web) ` +
    "and open the new address it prints.", true);
}

function setStatus(text, error) {
  $("#status").textContent = text;
  $("#status").classList.toggle("error", !!error);
}

function refusedToken(data) {
  setStatus(`${data.error || "access refused"} — reload this page to see how to get the new address.`, true);
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
  if (!query) { $("#heading").textContent = "Which answer is better?"; return; }
  showText($("#prompt"), query.prompt);
  const pair = query.kind === "compare";
  $("#heading").textContent = pair ? "Which answer is better?"
    : `How good is this answer? 1 = worst, ${query.scale} = best`;
  $("#pair").classList.toggle("hidden", !pair);
  $("#pair-controls").classList.toggle("hidden", !pair);
  $("#single").classList.toggle("hidden", pair);
  $("#rating-controls").classList.toggle("hidden", pair);
  if (pair) {
    showText($("#side-left .text"), query.sides[0].text);
    showText($("#side-right .text"), query.sides[1].text);
  } else {
    showText($("#completion"), query.completion);
    const controls = $("#rating-controls");
    controls.replaceChildren();
    for (let r = 1; r <= query.scale; r++) {
      const b = document.createElement("button");
      b.id = `btn-rate-${r}`;
      b.textContent = r === 1 ? "1 (worst)" : r === query.scale ? `${r} (best)` : String(r);
      b.addEventListener("click", () => send(r, String(r)));
      controls.appendChild(b);
    }
  }
  shownAt = performance.now();
}

// saved: whether the answer just before this load was stored (null: no answer involved)
async function loadNext(saved = null) {
  const { status, data } = await api("/api/next");
  if (status === 0) { unreachable(saved); return; }
  if (status === 403) { refusedToken(data); return; }
  if (status !== 200) { setStatus(`error ${status}: ${data.error || "reload the page"}`, true); return; }
  showProgress(data.progress);
  render(data.query);
}

const MEANING = { a: "left is better", "←": "left is better", b: "right is better", "→": "right is better", t: "tie",
  s: "skip" };

// answer: what the server stores; pressed: the key (or button) the person used, named back to them
async function send(answer, pressed) {
  if (!current || busy) return;
  busy = true;
  const query = current;
  const body = { query_id: query.id, answer, elapsed_s: Math.max(0, (performance.now() - shownAt) / 1000) };
  if (query.kind === "compare") body.swapped = query.swapped;
  try {
    const { status, data } = await api("/api/answer", body);
    if (status === 0) { unreachable(false); return; }
    if (status === 403) { refusedToken(data); return; }
    if (status === 200) {
      const meaning = query.kind === "compare" ? ` (${MEANING[pressed]})` : "";
      setStatus(`saved: query ${query.id} → you pressed ${pressed}${meaning}`);
    } else {
      setStatus(data.error || `error ${status}`, true);
    }
    await loadNext(status === 200);
  } finally {
    busy = false;
  }
}

// side = "left" | "right": which displayed completion won; the server wants the stored key
function pick(side, pressed) {
  if (!current || current.kind !== "compare") return;
  send(current.sides[side === "left" ? 0 : 1].key, pressed);
}

async function undo() {
  if (busy) return;
  busy = true;
  try {
    const { status, data } = await api("/api/undo", {});
    if (status === 0) { unreachable(null); return; }
    if (status === 403) { refusedToken(data); return; }
    setStatus(data.undone === null ? "nothing to undo" : `undone: query ${data.undone}`);
    await loadNext();
  } finally {
    busy = false;
  }
}

$("#btn-left").addEventListener("click", () => pick("left", "a"));
$("#btn-right").addEventListener("click", () => pick("right", "b"));
$("#btn-tie").addEventListener("click", () => send("tie", "t"));
$("#btn-skip").addEventListener("click", () => send("skip", "s"));
$("#btn-undo").addEventListener("click", undo);

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "u") { undo(); return; }
  if (!current) {
    if (/^[abts1-9]$/.test(key)) loadNext();  // nothing on screen: at least say whether the server is there
    return;
  }
  if (current.kind === "compare") {
    if (key === "a" || key === "arrowleft") pick("left", key === "a" ? "a" : "←");
    else if (key === "b" || key === "arrowright") pick("right", key === "b" ? "b" : "→");
    else if (key === "t") send("tie", "t");
    else if (key === "s") send("skip", "s");
  } else if (key === "s") {
    send("skip", "s");
  } else if (/^[1-9]$/.test(key) && Number(key) <= current.scale) {
    send(Number(key), key);
  }
});

// Give the query on screen back when the tab closes, so another labeller gets it at once.
window.addEventListener("pagehide", () => {
  fetch("/api/release", { method: "POST", keepalive: true, body: "{}",
    headers: { "X-Label-Token": token, "X-Label-Session": session, "Content-Type": "application/json" } })
    .catch(() => {});
});

loadNext();
setInterval(() => { if (!current && !busy) loadNext(); }, 2000);
// Keep the lease on the query on screen while the person thinks (leases last 10 minutes).
setInterval(() => { if (current && !busy) api("/api/renew", { query_id: current.id }); }, 60000);
