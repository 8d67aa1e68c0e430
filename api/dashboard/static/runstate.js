// A run's state folded from its events, as the server's projection does (echelon_platform/domain/
// projections.py): ranks only go up, replays count once, the first ending event decides. The page shows
// it at once; a GET of the run afterwards reconciles anything the stream coalesced away. The statuses and
// what each event implies come from the domain (vocabulary.js is generated from lifecycle.py).

import { IMPLIED, STATUSES as ORDER, TERMINAL, TOPIC } from "./vocabulary.js";

const at = (status) => ORDER.indexOf(status);
const CERTIFYING = at("CERTIFYING");

export function fromView(view) {
  const rank = at(view.status) > CERTIFYING ? "CERTIFYING" : view.status;
  return { ...view, rank, done: new Set(), extraDone: view.progress, completed: view.status === "COMPLETED" };
}

/** Fold one envelope into a run view (returns a new object; the input is untouched). */
export function applyEvent(run, event) {
  const next = { ...run, done: new Set(run.done) };
  const p = event.payload || {};
  const implied = IMPLIED[event.topic];
  if (implied && at(implied) > at(next.rank || ORDER[0])) next.rank = implied;
  switch (event.topic) {
    case TOPIC.RunRequested:
      Object.assign(next, { construct_id: p.construct_id, repo_url: p.repo_url, created_at: p.created_at });
      break;
    case TOPIC.RunIngested:
      next.total = p.total;
      break;
    case TOPIC.ReplayScored:
    case TOPIC.ReplayFailed:
      next.done.add(p.replay_id);
      break;
    case TOPIC.CertificateIssued:
      next.certificate_id ||= p.certificate.certificate_id;
      break;
    case TOPIC.RunFailed:
      if (!next.certificate_id) next.error ||= p.reason;
      break;
    case TOPIC.RunCompleted:
      next.completed = true;
      break;
  }
  next.updated_at = event.timestamp;
  // Replays already counted in the view the page started from are not in `done`: take the larger count.
  next.progress = Math.max(next.done.size, next.extraDone || 0);
  next.status = statusOf(next);
  return next;
}

function statusOf(run) {
  if (run.error && !run.certificate_id) return "FAILED";
  if (run.certificate_id) return run.completed ? "COMPLETED" : "CERTIFYING";
  const rank = run.rank || ORDER[0];
  if (run.total !== null && run.total !== undefined && run.progress >= run.total && at(rank) >= at("INVOKING")) {
    return at(rank) > CERTIFYING ? rank : "CERTIFYING";
  }
  return rank;
}

export const isTerminal = (status) => TERMINAL.includes(status);

/** The read model's view is older than what the stream already showed (a lower status or fewer replays). */
export function isBehind(view, shown) {
  const rank = (status) => (isTerminal(status) ? 99 : at(status));
  return rank(view.status) < rank(shown.status) || view.progress < shown.progress;
}
