// Proctor console: live updates, countdowns and the in-browser inclusion-proof check.
// Everything here is optional: each page works, and each action is a plain form, without it.
"use strict";

(function () {
  // ---------------------------------------------------------------- countdowns
  function words(ms) {
    var s = Math.floor(ms / 1000);
    if (s <= 0) return "closed";
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    var m = Math.floor((s % 3600) / 60), r = s % 60;
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + r + " s";
    return r + " s";
  }
  function tick() {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var text = words(Date.parse(el.getAttribute("data-countdown")) - Date.now());
      var out = el.tagName === "TIME" ? el.parentNode.querySelector(".left") : el;
      if (out) out.textContent = text;
    });
  }

  // ---------------------------------------------------------------- live updates (SSE)
  function say(text) {
    var live = document.getElementById("live");
    if (live) live.textContent = text;
  }
  function reloadLink(text) {
    var live = document.getElementById("live");
    if (!live) return;
    live.textContent = text + " ";
    var a = document.createElement("a");
    a.href = window.location.pathname + window.location.search;
    a.textContent = "Reload";
    live.appendChild(a);
  }
  function watchPlan(el) {
    if (!window.EventSource) return;
    var id = el.getAttribute("data-live-plan");
    var first = true, seen = null;
    var es = new EventSource("/live/plans/" + encodeURIComponent(id));
    es.onmessage = function (msg) {
      var state = JSON.parse(msg.data);
      if (!state) return;
      el.textContent = state.status;
      el.className = "badge st-" + state.status;
      Object.keys(state.steps).forEach(function (step) {
        document.querySelectorAll('[data-step-status="' + step + '"]').forEach(function (b) {
          b.textContent = state.steps[step];
          b.className = "badge st-" + state.steps[step];
        });
      });
      var key = JSON.stringify(state);
      if (!first && key !== seen) reloadLink("This plan changed: now " + state.status + ".");
      first = false;
      seen = key;
    };
  }
  function watchInbox(el) {
    if (!window.EventSource) return;
    // Compared as sets (each list sorted here, the same way): the server's order of the ids
    // must not matter, only which plans wait.
    var attr = el.getAttribute("data-live-inbox");
    var shown = (attr ? attr.split(" ") : []).sort().join(" ");
    var es = new EventSource("/live/inbox");
    es.onmessage = function (msg) {
      var ids = JSON.parse(msg.data).slice().sort().join(" ");
      if (ids !== shown) reloadLink("Your inbox changed.");
    };
  }

  // ---------------------------------------------------------------- inclusion proof (RFC 9162)
  function b64(text) {
    var raw = atob(text), out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  function cat(prefix, a, b) {
    var out = new Uint8Array(1 + a.length + (b ? b.length : 0));
    out[0] = prefix; out.set(a, 1); if (b) out.set(b, 1 + a.length);
    return out;
  }
  function sha(bytes) {
    return crypto.subtle.digest("SHA-256", bytes).then(function (d) { return new Uint8Array(d); });
  }
  function same(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  // RFC 9162 section 2.1.3.2, as the server's verify_inclusion does it.
  async function verifyInclusion(leaf, index, size, proof, root) {
    if (index >= size) throw new Error("index is not in the tree");
    var fn = index, sn = size - 1, r = leaf;
    for (var i = 0; i < proof.length; i++) {
      var p = proof[i];
      if (sn === 0) throw new Error("the proof is too long");
      if ((fn & 1) || fn === sn) {
        r = await sha(cat(1, p, r));
        while (fn && !(fn & 1)) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      } else {
        r = await sha(cat(1, r, p));
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the proof is too short");
    if (!same(r, root)) throw new Error("the path does not lead to the root");
  }
  async function checkProof(el) {
    if (!(window.crypto && crypto.subtle)) {
      el.textContent = "Browser check: WebCrypto is not available here (it needs HTTPS or localhost); the server check stands.";
      return;
    }
    try {
      var hashes = el.getAttribute("data-hashes").split(" ").filter(Boolean).map(b64);
      var leaf = await sha(cat(0, b64(el.getAttribute("data-body"))));
      await verifyInclusion(leaf, Number(el.getAttribute("data-index")),
        Number(el.getAttribute("data-size")), hashes, b64(el.getAttribute("data-root")));
      el.className = "okmsg";
      el.textContent = "Browser check: verified here with WebCrypto SHA-256 — the event's bytes hash into the root.";
    } catch (e) {
      el.className = "error";
      el.textContent = "Browser check: FAILED — " + e.message + ".";
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("[data-countdown]")) { tick(); setInterval(tick, 1000); }
    document.querySelectorAll("[data-live-plan]").forEach(watchPlan);
    document.querySelectorAll("[data-live-inbox]").forEach(watchInbox);
    document.querySelectorAll("[data-proof]").forEach(checkProof);
  });
})();
