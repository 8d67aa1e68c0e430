// A run's state folded from its events, as the server's projection does (echelon_platform/domain/
// projections.py): ranks only go up, replays count once, the first ending event decides. The page shows
// it at once; a GET of the run afterwards reconciles anything the stream coalesced away.

const ORDER = ["PENDING", "INGESTING", "INVOKING", "SCORING", "CERTIFYING", "COMPLETED", "FAILED"];
const IMPLIED = {
  "verify.run.requested": "PENDING",
  "verify.run.ingesting": "INGESTING",
  "verify.run.ingested": "INVOKING",
  "verify.replay.requested": "INVOKING",
  "verify.replay.invoked": "SCORING",
  "verify.replay.scored": "SCORING",
  "verify.replay.failed": "SCORING",
  "verify.run.certifying": "CERTIFYING",
  "verify.certificate.issued": "CERTIFYING",
};

export function fromView(view) {
  const rank = ORDER.indexOf(view.status) > 4 ? "CERTIFYING" : view.status;
  return { ...view, rank, done: new Set(), extraDone: view.progress, completed: view.status === "COMPLETED" };
}

/** Fold one envelope into a run view (returns a new object; the input is untouched). */
export function applyEvent(run, event) {
  const next = { ...run, done: new Set(run.done) };
  const p = event.payload || {};
  const implied = IMPLIED[event.topic];
  if (implied && ORDER.indexOf(implied) > ORDER.indexOf(next.rank || "PENDING")) next.rank = implied;
  switch (event.topic) {
    case "verify.run.requested":
      Object.assign(next, { construct_id: p.construct_id, repo_url: p.repo_url, created_at: p.created_at });
      break;
    case "verify.run.ingested":
      next.total = p.total;
      break;
    case "verify.replay.scored":
    case "verify.replay.failed":
      next.done.add(p.replay_id);
      break;
    case "verify.certificate.issued":
      next.certificate_id ||= p.certificate.certificate_id;
      break;
    case "verify.run.failed":
      if (!next.certificate_id) next.error ||= p.reason;
      break;
    case "verify.run.completed":
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
  const rank = run.rank || "PENDING";
  if (run.total !== null && run.total !== undefined && run.progress >= run.total && ORDER.indexOf(rank) >= 2) {
    return ORDER.indexOf(rank) > 4 ? rank : "CERTIFYING";
  }
  return rank;
}

export const isTerminal = (status) => status === "COMPLETED" || status === "FAILED";

/** The read model's view is older than what the stream already showed (a lower status or fewer replays). */
export function isBehind(view, shown) {
  const rank = (status) => (isTerminal(status) ? 99 : ORDER.indexOf(status));
  return rank(view.status) < rank(shown.status) || view.progress < shown.progress;
}
