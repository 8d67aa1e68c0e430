import { api, badge, claims, errorBox, fmtNum, fmtTime, h, query, token } from "../lib.js";

export async function certificatesPage(main) {
  const sort = h("select#cert-sort", {},
    [["created_desc", "newest"], ["composite_desc", "best composite"], ["brier_asc", "best Brier"]].map(([v, t]) => h("option", { value: v }, t)));
  const construct = h("input#cert-construct", { placeholder: "construct id" });
  const tbody = h("tbody");
  const error = h("div");
  async function load() {
    error.replaceChildren();
    try {
      const list = await api(`certificates?${query({ sort: sort.value, construct_id: construct.value.trim(), limit: 100 })}`, { auth: false });
      tbody.replaceChildren(...list.certificates.map((c) => h("tr", {},
        h("td", {}, h("a.mono", { href: `#/certificates/${c.id}` }, c.id)), h("td", {}, c.construct_id),
        h("td", {}, fmtNum(c.composite_score)), h("td", {}, fmtNum(c.brier)), h("td", {}, c.replay_count),
        h("td", {}, c.scoring_model), h("td", {}, fmtTime(c.created_at)))));
    } catch (e) {
      error.append(errorBox(e));
    }
  }
  main.append(h("h1", {}, "Certificates"),
    h("form.inline", { onsubmit: (e) => { e.preventDefault(); load(); } },
      h("label", {}, "Sort", sort), h("label", {}, "Construct", construct), h("button", { type: "submit" }, "Show")),
    error,
    h("table#certificates", {}, h("thead", {}, h("tr", {}, ["Certificate", "Construct", "Composite", "Brier", "Replays", "Judge", "Issued"].map((t) => h("th", {}, t)))), tbody));
  sort.addEventListener("change", load);
  await load();
}

const METRICS = [
  ["composite_score", "Composite"], ["brier", "Brier"], ["precision", "Precision"], ["recall", "Recall"],
  ["reply_accuracy", "Reply accuracy"], ["replay_count", "Replays scored"], ["sample_size", "Sample size"],
];

export async function certificatePage(main, certId) {
  const enc = encodeURIComponent(certId);
  const cert = await api(`certificates/${enc}`, { auth: false });
  const mine = new Map(); // replay id → my rating
  if (token()) {
    try {
      const ratings = await api(`ratings?${query({ certificate_id: certId, user_id: claims()?.sub, limit: 100 })}`);
      for (const r of ratings.ratings) mine.set(r.replay_id, r.rating);
    } catch {
      /* ratings are a nicety here */
    }
  }
  const verdict = h("span#verify-result");
  const verifyButton = h("button#verify", {
    type: "button",
    onclick: async () => {
      verifyButton.disabled = true;
      verdict.replaceChildren("checking…");
      try {
        const result = await api(`certificates/${enc}/verify`, { auth: false });
        verdict.replaceChildren(
          h(`span.badge.${result.valid ? "valid" : "invalid"}`, { "data-valid": String(result.valid) }, result.valid ? "VALID" : "INVALID"),
          ` hash ${result.hash_ok ? "matches" : "does NOT match"}, aggregates ${result.aggregates_ok ? "match" : "do NOT match"} the replay scores`);
      } catch (e) {
        verdict.replaceChildren(errorBox(e));
      } finally {
        verifyButton.disabled = false;
      }
    },
  }, "Verify");

  function rating(replayId) {
    if (!token()) return h("span.muted", {}, "sign in to rate");
    const note = h("span.muted");
    const select = h("select", { "aria-label": `rate ${replayId}`, "data-replay": replayId,
      onchange: async () => {
        note.textContent = "…";
        try {
          await api(`certificates/${enc}/replays/${encodeURIComponent(replayId)}/ratings`, { method: "POST", body: { rating: Number(select.value) } });
          note.textContent = " saved";
        } catch (e) {
          note.replaceChildren(errorBox(e));
        }
      } },
      h("option", { value: "" }, "—"),
      [1, 2, 3, 4, 5].map((n) => h("option", { value: n, selected: mine.get(replayId) === n }, String(n))));
    return h("span", {}, select, note);
  }

  main.append(h("div#certificate", {},
    h("h1", {}, "Certificate ", h("span.mono", {}, cert.id)),
    h("p", {}, cert.construct_id, " · run ", h("a.mono", { href: `#/runs/${cert.run_id}` }, cert.run_id), " · issued ", fmtTime(cert.created_at),
      cert.partial ? [" · ", badge("partial")] : null),
    cert.warning ? h("p.error", {}, cert.warning) : null,
    h("div.cards#metrics", {}, METRICS.map(([key, label]) =>
      h("div.card", { "data-metric": key }, h("span.muted", {}, label), h("b", {}, key.endsWith("_count") || key === "sample_size" ? String(cert[key]) : fmtNum(cert[key], 4))))),
    h("p", {}, "Judge ", h("b", {}, cert.scoring_model), " · ground truth ", cert.ground_truth_source, " ",
      h("span.mono", {}, cert.commit_range), " · methodology ", cert.methodology_version,
      " · weights ", h("span.mono", {}, JSON.stringify(cert.weights))),
    h("h2", {}, "Content hash"),
    h("p", {}, h("code#content-hash", {}, cert.content_hash), " ", verifyButton, " ", verdict),
    h("h2", {}, "Replays"),
    h("table#replays", {},
      h("thead", {}, h("tr", {}, ["Replay", "Ground truth", "Precision", "Recall", "Reply acc.", "Claims", "Changes", "Judge ms", "Your rating (1–5)"].map((t) => h("th", {}, t)))),
      h("tbody", {}, cert.replay_scores.map((s) => h("tr", { "data-replay": s.id },
        h("td.mono", {}, s.id), h("td.mono", {}, s.ground_truth_id), h("td", {}, fmtNum(s.precision)), h("td", {}, fmtNum(s.recall)),
        h("td", {}, fmtNum(s.reply_accuracy)), h("td", {}, `${s.claims_supported}/${s.claims_total}`),
        h("td", {}, `${s.changes_surfaced}/${s.changes_total}`), h("td", {}, fmtNum(s.scoring_latency_ms, 1)), h("td", {}, rating(s.id)))))),
    cert.failed_replays.length
      ? [h("h2", {}, "Failed replays"), h("table#cert-failed", {}, h("tbody", {}, cert.failed_replays.map((f) =>
          h("tr", {}, h("td.mono", {}, f.replay_id), h("td.mono", {}, f.ground_truth_id), h("td", {}, f.stage), h("td", {}, f.reason)))))]
      : null,
  ));
}
