import { api, badge, errorBox, fmtTime, h, noteShown, progressBar, query, token } from "../lib.js";
import { applyEvent, fromView, isBehind } from "../runstate.js";
import { LiveStream } from "../stream.js";

const STATUSES = ["", "PENDING", "INGESTING", "INVOKING", "SCORING", "CERTIFYING", "COMPLETED", "FAILED"];
const RECONCILE_MS = 300;

function filtersFromHash() {
  return Object.fromEntries(new URLSearchParams(location.hash.split("?")[1] || ""));
}

export async function runsPage(main) {
  main.append(h("h1", {}, "Runs"));
  if (!token()) {
    main.append(h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " to see your runs. ",
      h("a", { href: "#/certificates" }, "Certificates"), " are public."));
    return;
  }
  const filters = { status: "", construct_id: "", ...filtersFromHash() };
  const status = h("select#filter-status", { name: "status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s || "any status")));
  const construct = h("input#filter-construct", { name: "construct_id", value: filters.construct_id, placeholder: "construct id" });
  const form = h("form.inline#filters", {
    onsubmit: (event) => {
      event.preventDefault();
      filters.status = status.value;
      filters.construct_id = construct.value.trim();
      load();
    },
  }, h("label", {}, "Status", status), h("label", {}, "Construct", construct), h("button", { type: "submit" }, "Filter"));
  status.addEventListener("change", () => form.requestSubmit());
  const tbody = h("tbody");
  const info = h("p.muted#runs-total");
  const table = h("table#runs", {},
    h("thead", {}, h("tr", {}, ["Run", "Construct", "Status", "Progress", "Created", "Certificate"].map((t) => h("th", {}, t)))),
    tbody);
  const error = h("div");
  main.append(form, info, error, table);

  const runs = new Map(); // run id → {run, row}
  const pending = new Map(); // run id → reconcile timer
  const tries = {}; // run id → reconciles that found the read model behind

  const matches = (run) =>
    (!filters.status || run.status === filters.status) && (!filters.construct_id || run.construct_id === filters.construct_id);

  function renderRow(run) {
    return h("tr", { "data-run": run.run_id, "data-status": run.status },
      h("td", {}, h("a.mono", { href: `#/runs/${run.run_id}` }, run.run_id)),
      h("td", {}, run.construct_id ?? "—"),
      h("td", {}, badge(run.status)),
      h("td", {}, progressBar(run)),
      h("td", {}, fmtTime(run.created_at)),
      h("td", {}, run.certificate_id ? h("a.mono", { href: `#/certificates/${run.certificate_id}` }, "certificate") : "—"));
  }

  function show(run, { prepend = false } = {}) {
    const entry = runs.get(run.run_id);
    const row = renderRow(run);
    if (entry) entry.row.replaceWith(row);
    else if (prepend) tbody.prepend(row);
    else tbody.append(row);
    runs.set(run.run_id, { run, row });
  }

  async function reconcile(runId) {
    pending.delete(runId);
    try {
      const view = await api(`runs/${encodeURIComponent(runId)}`);
      const entry = runs.get(runId);
      if (entry && isBehind(view, entry.run)) {
        // The read model is a step behind what the stream showed: ask again shortly, never step back.
        if ((tries[runId] = (tries[runId] || 0) + 1) <= 10) later(runId);
        return;
      }
      delete tries[runId];
      if (entry || matches(view)) show(fromView(view), { prepend: !entry });
    } catch {
      /* the next event or reload shows it */
    }
  }

  function onEvent(event) {
    const runId = event.correlationId.replace(/^run-/, "");
    const entry = runs.get(runId);
    if (entry) {
      show(applyEvent(entry.run, event));
      noteShown(event);
    }
    if (entry || event.topic === "verify.run.requested") later(runId);
  }

  function later(runId) {
    clearTimeout(pending.get(runId));
    pending.set(runId, setTimeout(() => reconcile(runId), RECONCILE_MS));
  }

  async function load() {
    error.replaceChildren();
    const shown = query(filters);
    history.replaceState(null, "", `#/runs${shown ? `?${shown}` : ""}`);
    try {
      const list = await api(`runs?${query({ ...filters, limit: 50 })}`);
      tbody.replaceChildren();
      runs.clear();
      for (const view of list.runs) show(fromView(view));
      info.textContent = `${list.total} run(s)${list.total > list.runs.length ? `, newest ${list.runs.length} shown` : ""}`;
    } catch (e) {
      error.append(errorBox(e));
    }
  }

  await load();
  const stream = new LiveStream(
    { topics: ["verify.run.*", "verify.replay.*", "verify.certificate.issued"] },
    onEvent,
    { onGap: () => runs.forEach((_, id) => later(id)) }, // coalesced progress: ask the read model
  );
  return () => {
    stream.close();
    pending.forEach((timer) => clearTimeout(timer));
  };
}
