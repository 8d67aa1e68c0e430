import { ApiError, api, badge, claims, errorBox, fmtTime, h, noteShown, progressBar, query, scroller, token } from "../lib.js";
import { applyEvent, fromView, isBehind } from "../runstate.js";
import { LiveStream } from "../stream.js";
import { STATUSES as ORDER, TOPIC } from "../vocabulary.js";

const STATUSES = ["", ...ORDER]; // "": any status
const RECONCILE_MS = 300;
const COUNT_MS = 400; // batch the count's refresh while runs pour in
// …and count again once things are quiet: the list is read from the read model, which the writer updates a
// moment after the stream shows an event.
const SETTLE_MS = [1500, 5000];
const PAGE = 50;
const FILTER_KEYS = ["status", "construct_id", "from", "to"];

function filtersFromHash() {
  return Object.fromEntries(new URLSearchParams(location.hash.split("?")[1] || ""));
}

/** A date input's day (local time) as the instant it starts, or null. */
function dayStart(day, plus = 0) {
  if (!day) return null;
  const at = new Date(`${day}T00:00:00`);
  if (Number.isNaN(at.getTime())) return null;
  at.setDate(at.getDate() + plus);
  return at;
}

/** What to do when there are no runs yet: the form, the CLI, and whose runs the CLI makes. */
export function noRunsHint() {
  const me = claims()?.sub;
  return h("div.empty#runs-empty", {},
    h("p", {}, h("b", {}, "No runs yet."), " Start one with the ", h("a", { href: "#/submit" }, "Submit"),
      " form, or from a terminal:"),
    h("pre", {}, "echelon verify sample --oracle-callable pipeline_workers.oracles.sample:summarise --watch"),
    h("p.muted", {}, "Runs started by the CLI belong to user ", h("code", {}, "local"),
      me && me !== "local" ? [" — you are signed in as ", h("code", {}, me), ": sign in as ", h("code", {}, "local"), " to see them."] : "."));
}

export async function runsPage(main) {
  main.append(h("h1", {}, "Runs"));
  if (!token()) {
    main.append(h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " to see your runs. ",
      h("a", { href: "#/certificates" }, "Certificates"), " are public."));
    return;
  }
  const given = filtersFromHash();
  const filters = Object.fromEntries(FILTER_KEYS.map((k) => [k, given[k] || ""]));
  let offset = Math.max(0, Number.parseInt(given.offset, 10) || 0);

  const runId = h("input#search-run", { name: "run", placeholder: "run id or prefix", autocomplete: "off", spellcheck: "false" });
  const searchNote = h("span.muted#search-note");
  const search = h("form.inline#run-search", {
    onsubmit: (event) => {
      event.preventDefault();
      findRun(runId.value.trim());
    },
  }, h("label", {}, "Go to run", runId), h("button", { type: "submit" }, "Go"), searchNote);

  const status = h("select#filter-status", { name: "status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s || "any status")));
  const construct = h("input#filter-construct", { name: "construct_id", value: filters.construct_id, placeholder: "construct id" });
  const from = h("input#filter-from", { type: "date", name: "from", value: filters.from });
  const to = h("input#filter-to", { type: "date", name: "to", value: filters.to });
  const form = h("form.inline#filters", {
    onsubmit: (event) => {
      event.preventDefault();
      Object.assign(filters, { status: status.value, construct_id: construct.value.trim(), from: from.value, to: to.value });
      offset = 0;
      load();
    },
  }, h("label", {}, "Status", status), h("label", {}, "Construct", construct),
  h("label", {}, "Created from", from), h("label", {}, "to (inclusive)", to), h("button", { type: "submit" }, "Filter"));
  status.addEventListener("change", () => form.requestSubmit());

  const tbody = h("tbody");
  const info = h("span.muted#runs-total");
  const newer = h("button#page-newer", { type: "button", onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, "← Newer");
  const older = h("button#page-older", { type: "button", onclick: () => { offset += PAGE; load(); } }, "Older →");
  const pager = h("div.pager", {}, newer, info, older);
  const table = h("table#runs", {},
    h("thead", {}, h("tr", {}, ["Run", "Construct", "Status", "Progress", "Created", "Certificate"].map((t) => h("th", {}, t)))),
    tbody);
  const empty = h("div#runs-state");
  const error = h("div");
  main.append(search, form, pager, error, empty, scroller(table));

  const runs = new Map(); // run id → {run, row}
  const pending = new Map(); // run id → reconcile timer
  const tries = {}; // run id → reconciles that found the read model behind
  let total = 0;
  let countTimer = null;
  let settleTimers = [];

  const filtered = () => FILTER_KEYS.some((k) => filters[k]);
  const apiFilters = () => ({
    status: filters.status,
    construct_id: filters.construct_id,
    created_after: dayStart(filters.from)?.toISOString(),
    created_before: dayStart(filters.to, 1)?.toISOString(), // "to" is inclusive: before the next day starts
  });

  function matches(run) {
    const at = run.created_at ? new Date(run.created_at) : null;
    const after = dayStart(filters.from);
    const before = dayStart(filters.to, 1);
    return (!filters.status || run.status === filters.status) && (!filters.construct_id || run.construct_id === filters.construct_id)
      && (!after || (at && at >= after)) && (!before || (at && at < before));
  }

  function renderInfo() {
    const shown = runs.size;
    info.textContent = total === 0 ? "0 runs"
      : shown === 0 ? `${total} run(s); none on this page`
        : `runs ${offset + 1}–${offset + shown} of ${total}`;
    info.dataset.total = String(total);
    newer.disabled = offset === 0;
    older.disabled = offset + shown >= total;
    newer.hidden = older.hidden = total === 0; // the count stays: "0 runs"
    table.hidden = runs.size === 0;
    if (runs.size) empty.replaceChildren();
    else if (filtered()) {
      empty.replaceChildren(h("p.empty#runs-none-match", {}, "No runs match these filters. ",
        h("a", { href: "#/runs", onclick: (e) => { e.preventDefault(); clearFilters(); } }, "Clear the filters"), "."));
    } else if (offset > 0) empty.replaceChildren(h("p.empty", {}, "No runs this far back."));
    else empty.replaceChildren(noRunsHint());
  }

  function clearFilters() {
    for (const k of FILTER_KEYS) filters[k] = "";
    status.value = construct.value = from.value = to.value = "";
    offset = 0;
    load();
  }

  function renderRow(run) {
    return h("tr", { "data-run": run.run_id, "data-status": run.status },
      h("td", {}, h("a.mono", { href: `#/runs/${run.run_id}` }, run.run_id)),
      h("td", {}, run.construct_id ?? "—"),
      h("td", {}, badge(run.status)),
      h("td", {}, progressBar(run)),
      h("td.nowrap", {}, fmtTime(run.created_at)),
      h("td", {}, run.certificate_id ? h("a.mono", { href: `#/certificates/${run.certificate_id}` }, "certificate") : "—"));
  }

  // The server's order: newest first, equal times by run id descending (as the index ranks them).
  const stamp = (run) => (run.created_at ?? "").replace(/(:\d\d)(Z|[+-])/, "$1.000000$2"); // comparable as text
  const before = (a, b) => stamp(a) > stamp(b) || (stamp(a) === stamp(b) && a.run_id > b.run_id);

  function show(run, { insert = false } = {}) {
    const entry = runs.get(run.run_id);
    const row = renderRow(run);
    if (entry) entry.row.replaceWith(row);
    else if (insert) { // a run that just arrived: in its place among the newest
      const next = [...tbody.children].find((tr) => before(run, runs.get(tr.dataset.run).run));
      if (next) next.before(row);
      else tbody.append(row);
    } else tbody.append(row);
    runs.set(run.run_id, { run, row });
    if (!entry && runs.size > PAGE) { // the page keeps its size: the oldest row moves to the next page
      const last = tbody.lastElementChild;
      runs.delete(last.dataset.run);
      last.remove();
    }
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
      // New runs are the newest: they belong on the first page only.
      if (entry || (offset === 0 && matches(view))) show(fromView(view), { insert: !entry });
      renderInfo();
    } catch {
      /* the next event or reload shows it */
    }
  }

  /** The total from the server (cheap: one row), so the label follows runs as they arrive and change. */
  async function recount() {
    try {
      total = (await api(`runs?${query({ ...apiFilters(), limit: 1 })}`)).total;
      renderInfo();
    } catch {
      /* the next event tries again */
    }
  }

  function onEvent(event) {
    const runId = event.correlationId.replace(/^run-/, "");
    const entry = runs.get(runId);
    if (entry) {
      show(applyEvent(entry.run, event));
      noteShown(event);
    }
    if (entry || event.topic === TOPIC.RunRequested) later(runId);
    // A new run, or one changing status (a status filter counts it in or out): the count may change.
    if (event.topic.startsWith("verify.run.")) {
      if (!countTimer) countTimer = setTimeout(() => { countTimer = null; recount(); }, COUNT_MS);
      settleTimers.forEach(clearTimeout);
      settleTimers = SETTLE_MS.map((ms) => setTimeout(recount, ms));
    }
  }

  function later(runId) {
    clearTimeout(pending.get(runId));
    pending.set(runId, setTimeout(() => reconcile(runId), RECONCILE_MS));
  }

  async function load() {
    error.replaceChildren();
    const shown = query({ ...filters, offset: offset || "" });
    history.replaceState(null, "", `#/runs${shown ? `?${shown}` : ""}`);
    try {
      const list = await api(`runs?${query({ ...apiFilters(), limit: PAGE, offset })}`);
      tbody.replaceChildren();
      runs.clear();
      for (const view of list.runs) show(fromView(view));
      total = list.total;
      renderInfo();
    } catch (e) {
      error.append(errorBox(e));
    }
  }

  /** A run id opens the run; a prefix of one opens the only run of the newest 100 it names, or lists them. */
  async function findRun(text) {
    searchNote.replaceChildren();
    delete searchNote.dataset.hits;
    if (!text) return;
    try {
      const list = await api(`runs?${query({ limit: 100 })}`);
      const prefix = text.toUpperCase(); // ids are upper case; typed ones often are not
      const hits = list.runs.filter((r) => r.run_id === text || r.run_id.toUpperCase().startsWith(prefix));
      const exact = hits.find((r) => r.run_id === text);
      if (exact || hits.length === 1) {
        location.hash = `#/runs/${(exact || hits[0]).run_id}`;
        return;
      }
      if (!hits.length && text.length >= 26) { // a whole id, older than the newest 100: ask for it
        try {
          const view = await api(`runs/${encodeURIComponent(text)}`);
          location.hash = `#/runs/${view.run_id}`;
          return;
        } catch (e) {
          if (!(e instanceof ApiError && e.status === 404)) throw e;
        }
      }
      searchNote.dataset.hits = String(hits.length);
      searchNote.replaceChildren(hits.length
        ? h("span", {}, `${hits.length} runs start with “${text}”: `,
          hits.slice(0, 10).map((r) => [h("a.mono", { href: `#/runs/${r.run_id}` }, r.run_id), " "]))
        : text.length >= 26 ? `No run ${text}.` : `No run starts with “${text}” among your newest ${list.runs.length}.`);
    } catch (e) {
      searchNote.replaceChildren(errorBox(e));
    }
  }

  await load();
  const stream = new LiveStream(
    { topics: ["verify.run.*", "verify.replay.*", TOPIC.CertificateIssued] },
    onEvent,
    { onGap: () => { runs.forEach((_, id) => later(id)); recount(); } }, // coalesced progress: ask the read model
  );
  return () => {
    stream.close();
    clearTimeout(countTimer);
    settleTimers.forEach(clearTimeout);
    pending.forEach((timer) => clearTimeout(timer));
  };
}
