"use strict";
// infergate live view: polls <page>/state every 500 ms and redraws three tables.
// Every piece of text goes through textContent (never innerHTML): model names and request ids
// come from clients.
(function () {
  const POLL_MS = 500;
  const stateUrl = location.pathname.replace(/\/+$/, "") + "/state";
  let updates = 0;

  function el(tag, opts, children) {
    const node = document.createElement(tag);
    if (opts) {
      if (opts.cls) node.className = opts.cls;
      if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
      if (opts.title) node.title = String(opts.title);
      if (opts.data) for (const k of Object.keys(opts.data)) node.dataset[k] = String(opts.data[k]);
    }
    if (children) for (const c of children) if (c) node.appendChild(c);
    return node;
  }

  function bar(fraction, opts) {
    const f = Math.max(0, Math.min(1, Number(fraction) || 0));
    const fill = el("span");
    fill.style.width = (f * 100).toFixed(1) + "%";
    let cls = "bar";
    if (opts && opts.small) cls += " small";
    if (opts && opts.heat) cls += f >= 0.8 ? " hot" : f >= 0.6 ? " warm" : "";
    return el("span", { cls: cls }, [fill]);
  }

  function numCell(value, fraction, cls, heat) {
    return el("td", { cls: cls }, [
      el("div", { cls: "cell" }, [bar(fraction, { heat: heat }), el("span", { cls: "v", text: value })]),
    ]);
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "never";
    return s < 10 ? s.toFixed(2) + " s" : s.toFixed(0) + " s";
  }

  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }

  function health(ep) {
    if (!ep.healthy) return { cls: "unhealthy", text: "\u2716 unhealthy" };
    if (!ep.fresh) return { cls: "stale", text: ep.age === null ? "\u25cb not scraped" : "\u25d2 stale" };
    return { cls: "healthy", text: "\u25cf healthy" };
  }

  function latencyCell(m) {
    // the latency model's view of one endpoint (predicted-latency-scorer), empty without it
    if (!m || !m.observations) return el("td", { cls: "latency sub", text: m ? "no answer yet" : "" });
    const text =
      m.last_predicted_ttft_ms.toFixed(0) + " / " + m.last_observed_ttft_ms.toFixed(0) + " ms";
    // TTFT: observed over predicted; TPOT: how many times slower than the pool's fastest it decodes
    const tpot = m.tpot_relative_to_pool === undefined ? "" : " \u00b7 TPOT \u00d7" + m.tpot_relative_to_pool.toFixed(2);
    const sub = "backlog " + m.backlog_ms.toFixed(0) + " ms \u00b7 \u00d7" + m.ttft_observed_over_predicted.toFixed(2) + tpot;
    return el("td", { cls: "latency" }, [el("div", { text: text }), el("div", { cls: "sub", text: sub })]);
  }

  function renderEndpoints(state) {
    const eps = state.endpoints || [];
    const model = state.latency_model || {};
    const maxWaiting = Math.max(5, ...eps.map((e) => e.waiting));
    const maxRunning = Math.max(1, ...eps.map((e) => e.running));
    const rows = eps.map((ep) => {
      const h = health(ep);
      const adapters = el("td", { cls: "adapters wrap" });
      for (const a of ep.running_adapters) adapters.appendChild(el("span", { cls: "chip running", text: a }));
      for (const a of ep.waiting_adapters)
        adapters.appendChild(el("span", { cls: "chip waiting", text: a, title: "waiting for a slot" }));
      for (const a of ep.idle_adapters || [])
        adapters.appendChild(el("span", { cls: "chip idle", text: a, title: "loaded, no request running" }));
      if (ep.max_adapters) adapters.appendChild(el("span", { cls: "sub", text: "max " + ep.max_adapters }));
      return el("tr", { cls: h.cls === "healthy" ? "" : h.cls, data: { key: ep.key } }, [
        el("td", { cls: "endpoint" }, [
          el("div", { cls: "name", text: ep.name }),
          el("div", { cls: "mono sub", text: ep.key }),
        ]),
        el("td", { cls: "health-cell" }, [el("span", { cls: "health " + h.cls, text: h.text })]),
        numCell(ep.waiting, ep.waiting / maxWaiting, "waiting", false),
        numCell(ep.running, ep.running / maxRunning, "running", false),
        numCell(ep.kv_pct.toFixed(1) + "%", ep.kv_pct / 100, "kv", true),
        el("td", { cls: "num inflight", text: ep.in_flight }),
        adapters,
        el("td", { cls: "num age", text: fmtSeconds(ep.age) }),
        latencyCell(model[ep.key]),
      ]);
    });
    document.querySelector("#endpoints tbody").replaceChildren(...rows);
    document.getElementById("endpoints-empty").classList.toggle("hidden", rows.length > 0);
    const ready = eps.filter((e) => e.candidate).length;
    const kv = eps.length ? eps.reduce((s, e) => s + e.kv_pct, 0) / eps.length : 0;
    const waiting = eps.reduce((s, e) => s + e.waiting, 0);
    document.getElementById("summary").textContent =
      ready + "/" + eps.length + " ready \u00b7 waiting " + waiting + " \u00b7 avg KV " + kv.toFixed(1) + "%";
  }

  function renderBands(state) {
    const flow = state.flow || { enabled: false, bands: [] };
    const rows = flow.bands.map((b) => {
      const flows = el("td", { cls: "flows wrap" });
      for (const f of b.flows)
        flows.appendChild(
          el("span", { cls: "chip", text: f.fairness_id + ": " + f.queued + ", " + fmtSeconds(f.oldest_wait) }),
        );
      return el("tr", { data: { priority: b.priority } }, [
        el("td", { cls: "num priority", text: b.priority }),
        el("td", { cls: "num queued", text: b.queued }),
        el("td", { cls: "num bytes", text: fmtBytes(b.bytes) }),
        flows,
      ]);
    });
    document.querySelector("#bands tbody").replaceChildren(...rows);
    const empty = document.getElementById("bands-empty");
    empty.textContent = flow.enabled ? "No request is waiting." : "Flow control is off.";
    empty.classList.toggle("hidden", rows.length > 0);
    document.getElementById("flow-summary").textContent = flow.enabled
      ? flow.queued + " queued, " + fmtBytes(flow.bytes)
      : "off";
  }

  function renderDecisions(state) {
    const ds = state.decisions || [];
    const plugins = [];
    for (const d of ds) for (const p of Object.keys(d.plugin_scores)) if (!plugins.includes(p)) plugins.push(p);
    const head = [["Age", "num"], ["Request"], ["Model"], ["Target model"], ["Prio", "num"], ["Endpoint"], ["Total", "num"]]
      .concat(plugins.map((p) => [p.replace(/-scorer$/, ""), "plugin", p]));
    document
      .querySelector("#decisions thead tr")
      .replaceChildren(
        ...head.map((h) => el("th", { text: h[0], cls: h[1] || "", title: h[2], data: h[2] ? { plugin: h[2] } : null })),
      );
    const rows = ds.map((d) => {
      const total = d.endpoint !== null ? d.scores[d.endpoint] : undefined;
      const others = Object.keys(d.scores)
        .map((k) => k + ": " + Number(d.scores[k]).toFixed(3))
        .join("\n");
      const cells = [
        el("td", { cls: "num age", text: fmtSeconds(Math.max(0, state.now - d.at)) }),
        el("td", { cls: "mono request", text: d.request_id }),
        el("td", { cls: "model", text: d.model, title: d.model }),
        d.target_model === d.model
          ? el("td", { cls: "target-model same sub", text: "(same)", title: d.target_model })
          : el("td", { cls: "target-model", text: d.target_model, title: d.target_model }),
        el("td", { cls: "num priority", text: d.priority }),
        el("td", {
          cls: "endpoint",
          text: d.endpoint_name || d.endpoint,
          title: d.endpoint + (d.fallbacks.length ? "\nfallbacks: " + d.fallbacks.join(", ") : ""),
        }),
        el("td", { cls: "num total", text: total === undefined ? "" : Number(total).toFixed(3), title: others }),
      ];
      for (const p of plugins) {
        const per = d.plugin_scores[p] || {};
        const v = d.endpoint !== null ? per[d.endpoint] : undefined;
        const td = el("td", { cls: "plugin", data: { plugin: p } });
        if (v !== undefined)
          td.appendChild(el("div", { cls: "cell" }, [bar(v, { small: true }), el("span", { text: Number(v).toFixed(2) })]));
        cells.push(td);
      }
      return el("tr", { data: { requestId: d.request_id } }, cells);
    });
    document.querySelector("#decisions tbody").replaceChildren(...rows);
    document.getElementById("decisions-empty").classList.toggle("hidden", rows.length > 0);
    document.getElementById("decisions-summary").textContent =
      "last " + ds.length + " of " + state.decisions_total;
  }

  function setStatus(ok, text) {
    const s = document.getElementById("status");
    s.className = "status " + (ok ? "ok" : "error");
    s.textContent = text;
  }

  async function tick() {
    try {
      const resp = await fetch(stateUrl, { cache: "no-store", headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const state = await resp.json();
      document.getElementById("pool").textContent = state.pool || "\u2013";
      renderEndpoints(state);
      renderBands(state);
      renderDecisions(state);
      updates += 1;
      document.body.dataset.updates = String(updates);
      setStatus(true, "live \u00b7 " + new Date().toLocaleTimeString());
    } catch (err) {
      setStatus(false, "disconnected (" + (err && err.message ? err.message : err) + "), retrying");
    } finally {
      setTimeout(tick, POLL_MS);
    }
  }

  tick();
})();
