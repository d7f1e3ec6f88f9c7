// The chat page: shows the oldest conversation waiting for the user's reply and posts the reply back.
(function () {
  "use strict";
  const token = new URLSearchParams(window.location.search).get("token") || "";
  const headers = { "Content-Type": "application/json", "X-Label-Token": token };
  const $ = (id) => document.getElementById(id);
  let current = null;

  function show(turn, pending) {
    $("pending").textContent = pending + " waiting";
    if (!turn) {
      current = null;
      $("turn").classList.add("hidden");
      $("empty").classList.remove("hidden");
      return;
    }
    if (current === turn.id) return;
    current = turn.id;
    const box = $("messages");
    box.replaceChildren();
    for (const m of turn.messages) {
      const div = document.createElement("div");
      div.className = "msg " + m.role;
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = m.role;
      div.appendChild(role);
      div.appendChild(document.createTextNode(m.content));
      box.appendChild(div);
    }
    $("empty").classList.add("hidden");
    $("turn").classList.remove("hidden");
    $("reply").value = "";
    $("reply").focus();
  }

  async function poll() {
    try {
      const res = await fetch("/api/chat/next", { headers });
      if (res.ok) {
        const body = await res.json();
        show(body.turn, body.pending);
      }
    } catch (e) {
      $("status").textContent = "cannot reach the server: " + e;
    }
  }

  async function send(payload) {
    if (current === null) return;
    const res = await fetch("/api/chat/reply", { method: "POST", headers, body: JSON.stringify(payload) });
    const body = await res.json();
    $("status").textContent = res.ok ? "sent" : body.error;
    current = null;
    await poll();
  }

  $("btn-send").addEventListener("click", () => {
    const text = $("reply").value;
    if (text.trim()) send({ id: current, text });
  });
  $("btn-end").addEventListener("click", () => send({ id: current, end: true }));
  $("reply").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      $("btn-send").click();
    }
  });
  poll();
  setInterval(poll, 1000);
})();
