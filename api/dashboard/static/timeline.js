// A run's logged events as a timeline: the run-level events, then one collapsible group per replay (its
// requested / invoked / scored or failed events), with times to the millisecond, the time between events,
// each replay's total, a payload view on demand (secrets never shown) and a filter by replay state or topic.

import { fmtClock, fmtDuration, fmtNum, h, redact } from "./lib.js";
import { TOPIC } from "./vocabulary.js";

const LONG = 1500; // characters of a string shown in a payload before it is cut (diffs can be large)
const STATES = [["", "all replays"], ["failed", "failed replays"], ["scored", "scored replays"], ["open", "unfinished replays"]];
const STATE_OF = {
  [TOPIC.ReplayRequested]: "open",
  [TOPIC.ReplayInvoked]: "open",
  [TOPIC.ReplayScored]: "scored",
  [TOPIC.ReplayFailed]: "failed",
};

const ms = (event) => Date.parse(event.timestamp);

function cut(value) {
  if (typeof value === "string" && value.length > LONG) return `${value.slice(0, LONG)}… (${value.length - LONG} more characters)`;
  if (Array.isArray(value)) return value.map(cut);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, cut(v)]));
  return value;
}

/** One line saying what an event carries: the oracle's reply, the judge's score, a failure's reason. */
function gist(event) {
  const p = redact(event.payload || {});
  switch (event.topic) {
    case TOPIC.RunRequested:
      return `${p.construct_id ?? ""} · ${p.oracle?.type ?? ""} ${p.oracle?.url ?? [p.oracle?.module, p.oracle?.callable].filter(Boolean).join(":")}`;
    case TOPIC.RunIngested:
      return `${p.repeats > 1 ? `${p.total / p.repeats} change(s) × ${p.repeats} repeats` : `${p.total} change(s)`} · ${p.ground_truth_source ?? ""} ${p.commit_range ?? ""}`;
    case TOPIC.ReplayRequested:
      return p.record ? `${p.record.id} · ${p.record.title}` : "";
    case TOPIC.ReplayInvoked:
      return `oracle replied in ${fmtDuration(p.latency_ms)}: ${(p.reply?.summary ?? "").slice(0, 140)}`;
    case TOPIC.ReplayScored: {
      const s = p.score || {};
      return `judge ${s.scoring_model ?? ""}: precision ${fmtNum(s.precision, 2)}, recall ${fmtNum(s.recall, 2)}, reply ${fmtNum(s.reply_accuracy, 2)} · ${fmtDuration(s.scoring_latency_ms)}`;
    }
    case TOPIC.ReplayFailed:
    case TOPIC.RunFailed:
      return `${p.stage ?? ""}: ${p.reason ?? ""}`;
    case TOPIC.CertificateIssued:
      return p.certificate ? `certificate ${p.certificate.certificate_id} · composite ${fmtNum(p.certificate.composite_score)}` : "";
    default:
      return "";
  }
}

export class Timeline {
  constructor() {
    this.byId = new Map(); // event id → log seq, for causation links
    this.groups = new Map(); // replay id → {el, list, head, events, state}
    this.runFirst = null;
    this.runLast = null;
    this.topics = new Set();
    this.state = h("select#timeline-state", { "aria-label": "replays shown", onchange: () => this.applyFilter() },
      STATES.map(([v, t]) => h("option", { value: v }, t)));
    this.topic = h("select#timeline-topic", { "aria-label": "topic shown", onchange: () => this.applyFilter() },
      h("option", { value: "" }, "all topics"));
    this.count = h("span.muted#timeline-count");
    this.runEvents = h("ol.timeline#run-events");
    this.runTitle = h("h3", {}, "Run");
    this.replays = h("div#replay-groups");
    this.none = h("p.empty#timeline-none", { hidden: true }, "No events match this filter.");
    this.el = h("section#timeline", {},
      h("form.inline#timeline-filter", { onsubmit: (e) => e.preventDefault() },
        h("label", {}, "Show", this.state), h("label", {}, "Topic", this.topic),
        h("button", { type: "button", id: "expand-all", onclick: () => this.openAll(true) }, "Expand all"),
        h("button", { type: "button", id: "collapse-all", onclick: () => this.openAll(false) }, "Collapse all"),
        this.count),
      this.runTitle, this.runEvents, h("h3", {}, "Replays"), this.replays, this.none);
  }

  /** Append one logged event (log order). */
  add(seq, event) {
    this.byId.set(event.eventId, seq);
    if (!this.topics.has(event.topic)) {
      this.topics.add(event.topic);
      this.topic.append(h("option", { value: event.topic }, event.topic));
    }
    const replayId = event.payload?.replay_id;
    if (!replayId) {
      this.runEvents.append(this.item(seq, event, this.runLast));
      this.runFirst ||= event;
      this.runLast = event;
      const span = ms(event) - ms(this.runFirst);
      this.runTitle.replaceChildren("Run ", h("span.muted.total", { "data-ms": String(span) },
        `· ${this.runEvents.childElementCount} event(s) · ${fmtDuration(span)} from request to last`));
      return;
    }
    const group = this.group(replayId);
    group.list.append(this.item(seq, event, group.events.at(-1)));
    group.events.push(event);
    const state = STATE_OF[event.topic];
    if (state && group.state !== "failed" && group.state !== "scored") group.state = state;
    if (event.topic === TOPIC.ReplayRequested && event.payload.record) group.record = event.payload.record;
    this.dirty.add(group);
  }

  dirty = new Set();

  /** Refresh the replay headers touched since the last call, and the filter. */
  settle() {
    for (const group of this.dirty) this.renderHead(group);
    this.dirty.clear();
    this.applyFilter();
  }

  group(replayId) {
    let group = this.groups.get(replayId);
    if (group) return group;
    const head = h("summary");
    const list = h("ol.timeline");
    const el = h("details.replay", { "data-replay": replayId }, head, list);
    group = { el, head, list, events: [], state: "open", record: null, replayId };
    this.groups.set(replayId, group);
    this.replays.append(el);
    return group;
  }

  renderHead(group) {
    const first = group.events[0];
    const last = group.events.at(-1);
    group.el.dataset.state = group.state;
    group.head.replaceChildren(
      h("span.mono", {}, group.replayId), " ",
      h(`span.badge.${group.state === "failed" ? "FAILED" : group.state === "scored" ? "COMPLETED" : "SCORING"}`, {}, group.state),
      " ", group.record ? h("span.title", {}, `${group.record.id} · ${group.record.title}`) : null, " ",
      h("span.muted.total", { "data-ms": String(ms(last) - ms(first)) },
        `${group.events.length} event(s) · ${fmtDuration(ms(last) - ms(first))}`));
  }

  item(seq, event, previous) {
    const cause = event.causationId;
    const link = cause
      ? this.byId.has(cause)
        ? h("a.cause", { href: `#ev-${this.byId.get(cause)}`, onclick: (e) => { e.preventDefault(); this.highlight(this.byId.get(cause)); } }, `← #${this.byId.get(cause)}`)
        : h("span.muted.mono", {}, `← ${cause}`)
      : null;
    const payload = h("details.payload", {}, h("summary", {}, "payload"));
    payload.addEventListener("toggle", () => {
      if (payload.open && payload.childElementCount === 1) {
        payload.append(h("pre", {}, JSON.stringify(cut(redact(event.payload || {})), null, 2)));
      }
    }, { once: false });
    const step = previous ? ms(event) - ms(previous) : null;
    return h(`li${event.topic.endsWith(".failed") ? ".failed" : ""}`, { id: `ev-${seq}`, "data-topic": event.topic, "data-seq": String(seq) },
      h("span.seq", {}, `#${seq}`), h("span.topic", {}, event.topic), " ",
      h("span.time.mono", { title: event.timestamp }, fmtClock(event.timestamp)), " ",
      step === null ? null : h("span.step.muted", { "data-ms": String(step) }, `+${fmtDuration(step)}`), " ", link,
      h("div.gist", {}, gist(event)), payload);
  }

  highlight(seq) {
    for (const li of this.el.querySelectorAll(".target")) li.classList.remove("target");
    const li = document.getElementById(`ev-${seq}`);
    if (!li) return;
    const group = li.closest("details.replay");
    if (group) group.open = true;
    li.classList.add("target");
    li.scrollIntoView({ block: "center" });
  }

  /** Open a replay's group and bring it into view (from the failed-replays table). */
  reveal(replayId) {
    const group = this.groups.get(replayId);
    if (!group) return;
    if (group.el.hidden) {
      this.state.value = "";
      this.topic.value = "";
      this.applyFilter();
    }
    group.el.open = true;
    group.el.scrollIntoView({ block: "start" });
  }

  openAll(open) {
    for (const group of this.groups.values()) if (!group.el.hidden) group.el.open = open;
  }

  applyFilter() {
    const state = this.state.value;
    const topic = this.topic.value;
    let shown = 0;
    for (const li of this.runEvents.children) {
      li.hidden = Boolean(state) || (topic && li.dataset.topic !== topic);
      if (!li.hidden) shown += 1;
    }
    let groups = 0;
    for (const group of this.groups.values()) {
      let visible = 0;
      for (const li of group.list.children) {
        li.hidden = Boolean(topic) && li.dataset.topic !== topic;
        if (!li.hidden) visible += 1;
      }
      group.el.hidden = (state && group.state !== state) || visible === 0;
      if (!group.el.hidden) {
        groups += 1;
        shown += visible;
      }
    }
    this.runEvents.hidden = this.runTitle.hidden = ![...this.runEvents.children].some((li) => !li.hidden);
    this.count.textContent = `${shown} event(s) · ${groups} of ${this.groups.size} replay(s) shown`;
    this.count.dataset.groups = String(groups);
    this.none.hidden = shown > 0;
  }
}
