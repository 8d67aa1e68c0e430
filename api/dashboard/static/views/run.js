import { api, badge, errorBox, fmtTime, h, noteShown, progressBar, scroller } from "../lib.js";
import { applyEvent, fromView, isTerminal } from "../runstate.js";
import { LiveStream } from "../stream.js";
import { Timeline } from "../timeline.js";
import { TOPIC } from "../vocabulary.js";

const HISTORY_MS = 250; // batch the timeline's log reads while events pour in
const LAG_MS = 500; // ask the log again while it lags what the stream showed…
const LAG_TRIES = 240; // …for up to two minutes (the next live event starts again)

export async function runPage(main, runId) {
  const enc = encodeURIComponent(runId);
  let run = fromView(await api(`runs/${enc}`));
  const head = h("div#run-head");
  const timeline = new Timeline();
  const failures = h("div#failures");
  const error = h("div");
  main.append(h("h1", {}, "Run ", h("span.mono", {}, runId)), head, error,
    h("h2", {}, "Failed replays"), failures, h("h2", {}, "Event history"), timeline.el);

  function renderHead() {
    head.replaceChildren(...[
      h("p", {}, badge(run.status), " ", run.construct_id ?? "", " · ", h("span.mono", {}, run.repo_url ?? ""),
        " · created ", fmtTime(run.created_at)),
      progressBar(run, true),
      run.error ? h("p.error#run-error", {}, run.error) : null,
      run.certificate_id
        ? h("p", {}, "Certificate: ", h("a.mono#certificate-link", { href: `#/certificates/${run.certificate_id}` }, run.certificate_id))
        : null,
    ].filter(Boolean));
    head.dataset.status = run.status;
  }

  // ---- the timeline, from the event log (GET /runs/{id}/events), appended page by page ----
  let after = 0;
  const failed = [];
  let loading = null;
  let again = false;

  function renderFailures() {
    failures.replaceChildren(failed.length
      ? scroller(h("table#failed-replays", {}, h("thead", {}, h("tr", {}, ["Replay", "Ground truth", "Stage", "Reason"].map((t) => h("th", {}, t)))),
        h("tbody", {}, failed.map((f) => h("tr", {}, h("td.mono", {}, h("a", { href: `#/runs/${runId}`,
          onclick: (e) => { e.preventDefault(); timeline.reveal(f.replay_id); } }, f.replay_id)), h("td.mono", {}, f.ground_truth_id),
          h("td", {}, f.stage), h("td", {}, f.reason))))))
      : h("p.muted", {}, "None."));
  }

  async function loadHistory() {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      try {
        do {
          again = false;
          let next = after;
          while (next !== null) {
            const page = await api(`runs/${enc}/events?after=${next}&limit=500`);
            for (const { seq, event } of page.events) {
              timeline.add(seq, event);
              if (event.topic === TOPIC.ReplayFailed) failed.push(event.payload);
              after = seq;
            }
            next = page.next_after;
          }
          renderFailures();
          timeline.settle();
        } while (again);
      } catch (e) {
        error.replaceChildren(errorBox(e));
      } finally {
        loading = null;
      }
    })();
    return loading;
  }

  renderHead();
  await loadHistory();
  if (isTerminal(run.status)) return () => {};

  let timer = null;
  let closed = false;
  const streamed = new Set(); // ids of events the stream showed: the log (the timeline's source) may lag them
  // Read the log again until it holds every event the stream showed (the writer logs them a moment later).
  let lagging = 0;
  async function catchUp() {
    await loadHistory();
    const behind = [...streamed].some((id) => !timeline.byId.has(id));
    lagging = behind ? lagging + 1 : 0;
    if (!closed && behind && lagging <= LAG_TRIES) timer = setTimeout(catchUp, LAG_MS);
  }
  const stream = new LiveStream({ topics: ["verify.>"], correlationId: `run-${runId}` }, (event) => {
    run = applyEvent(run, event);
    renderHead();
    noteShown(event);
    streamed.add(event.eventId);
    clearTimeout(timer);
    timer = setTimeout(catchUp, HISTORY_MS);
    if (isTerminal(run.status)) {
      // The read model has the exact counts (the stream may have coalesced progress events); it may also
      // still be a step behind the stream, so only its own terminal state replaces the one shown.
      api(`runs/${enc}`)
        .then((view) => {
          if (isTerminal(view.status)) {
            run = fromView(view);
            renderHead();
          }
        })
        .catch(() => {});
    }
  }, { onRefused: (reason) => error.replaceChildren(h("div.error", {}, `live updates refused: ${reason}`)) });
  return () => {
    closed = true;
    stream.close();
    clearTimeout(timer);
  };
}
