import { ApiError, api, badge, claims, errorBox, fmtNum, fmtTime, h, query, scroller, token } from "../lib.js";

export async function certificatesPage(main) {
  const sort = h("select#cert-sort", {},
    [["created_desc", "newest"], ["composite_desc", "best composite"], ["brier_asc", "best Brier"]].map(([v, t]) => h("option", { value: v }, t)));
  const construct = h("input#cert-construct", { placeholder: "construct id" });
  const tbody = h("tbody");
  const error = h("div");
  const state = h("div#certificates-state");
  const table = h("table#certificates", {}, h("thead", {}, h("tr", {}, ["Certificate", "Construct", "Composite", "Brier", "Replays", "Judge", "Issued"].map((t) => h("th", {}, t)))), tbody);
  async function load() {
    error.replaceChildren();
    try {
      const wanted = construct.value.trim();
      const list = await api(`certificates?${query({ sort: sort.value, construct_id: wanted, limit: 100 })}`, { auth: false });
      table.hidden = list.certificates.length === 0;
      state.replaceChildren(list.certificates.length ? ""
        : wanted
          ? h("p.empty#certificates-none-match", {}, `No certificate for construct “${wanted}”. `,
            h("a", { href: "#/certificates", onclick: (e) => { e.preventDefault(); construct.value = ""; load(); } }, "Show all"), ".")
          : h("div.empty#certificates-empty", {}, h("p", {}, h("b", {}, "No certificates yet."),
            " A run that completes issues one: ", h("a", { href: "#/submit" }, "submit a run"), " or watch your ",
            h("a", { href: "#/runs" }, "runs"), " finish.")));
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
    error, state, scroller(table));
  sort.addEventListener("change", load);
  await load();
}

const short = (text, n = 16) => (text.length > n + 10 ? `${text.slice(0, n)}…${text.slice(-8)}` : text);

/** A long value shown abbreviated, whole in its title, with a button copying it whole. */
function copyable(id, value) {
  const note = h("span.muted");
  return h("span", {}, h(`code#${id}`, { title: value, "data-value": value }, short(value)), " ",
    h("button.copy", { type: "button", "data-copies": id, onclick: async () => {
      try {
        await navigator.clipboard.writeText(value);
        note.textContent = " copied";
      } catch {
        getSelection().selectAllChildren(document.getElementById(id)); // no clipboard access: select it
        note.textContent = " select and copy";
      }
    } }, "copy"), note);
}

/** The published key that signed, from /.well-known/echelon-keys.json (null if not published there). */
async function signingKey(keyId) {
  try {
    const { keys } = await api("/.well-known/echelon-keys.json", { auth: false });
    return keys.find((k) => k.key_id === keyId) || null;
  } catch {
    return null;
  }
}

function oracleFacts(oracle) {
  if (!oracle) return h("p.muted#oracle", {}, "Not recorded (a certificate issued before oracle identities were).");
  return h("dl.facts#oracle", {},
    h("dt", {}, "Type"), h("dd#oracle-type", {}, oracle.type),
    h("dt", {}, "Target"), h("dd.mono#oracle-target", {}, oracle.target),
    h("dt", {}, "Fingerprint"), h("dd#oracle-fingerprint", {}, oracle.fingerprint
      ? h("code", {}, oracle.fingerprint) : h("span.muted", {}, "none known (the oracle reported no version)")));
}

function signatureFacts(signature, key) {
  if (!signature) return h("p.muted#signature", {}, "Unsigned: issued before certificates were signed (schema 1).");
  return h("dl.facts#signature", {},
    h("dt", {}, "Algorithm"), h("dd#signature-algorithm", {}, signature.algorithm),
    h("dt", {}, "Key id"), h("dd", {}, copyable("signature-key-id", signature.key_id)),
    h("dt", {}, "Signature"), h("dd", {}, copyable("signature-value", signature.value)),
    h("dt", {}, "Signing key"), h("dd#signing-key", {}, key
      ? [copyable("signing-public-key", key.public_key), ` ${key.algorithm} · valid from ${fmtTime(key.not_before)}`,
        key.retired ? " · retired" : "", key.endorsements?.length ? ` · endorsed by ${short(key.endorsements[0].endorsed_by, 12)}` : " · the issuer's root key",
        " · ", h("a", { href: "/.well-known/echelon-keys.json" }, "published keys")]
      : h("span.error", {}, "not among the published keys")));
}

const METRICS = [
  ["composite_score", "Composite"], ["brier", "Brier"], ["precision", "Precision"], ["recall", "Recall"],
  ["reply_accuracy", "Reply accuracy"], ["replay_count", "Replays scored"], ["sample_size", "Sample size"],
];

/** "95% [low, high] · n" under a figure, when the certificate carries intervals. */
function intervalOf(cert, key) {
  const b = cert.uncertainty?.[key];
  return b ? h("small.interval", { "data-interval": key }, `95% [${fmtNum(b.low, 4)}, ${fmtNum(b.high, 4)}] · n ${b.n}`) : null;
}

function uncertaintyNote(cert) {
  const u = cert.uncertainty;
  if (!u) return h("p.muted#uncertainty", {}, "No intervals: issued before certificates carried them.");
  const calibration = cert.calibration
    ? [" Calibration Brier ", h("b", {}, fmtNum(cert.calibration.brier_score, 4)), " ", intervalOf(cert, "brier_score"),
      ", ECE ", h("b", {}, fmtNum(cert.calibration.expected_calibration_error, 4)), " ", intervalOf(cert, "expected_calibration_error"), "."]
    : [];
  return h("p#uncertainty", {}, `Intervals: 95% percentile bootstrap over replays (${u.resamples} resamples, seed ${u.seed}).`,
    ...calibration,
    u.replays_to_narrow ? h("span#replays-to-narrow", {}, ` The composite is known to within more than ±0.1: about ${u.replays_to_narrow} more replays would narrow it to ±0.1.`) : null);
}

/** Runs with repeats: each figure's spread over the repeat-wise figures (how stable the oracle is). */
function repeatSpread(cert) {
  const r = cert.repeat_spread;
  if (!r) return null;
  return [h("h2", {}, `Oracle stability over ${r.repeats} repeats`),
    h("p.muted", {}, `Each figure computed per repeat (scored replays per repeat: ${r.scored.join(", ")}); the headline figures are the mean over every scored replay.`),
    scroller(h("table#repeat-spread", {},
      h("thead", {}, h("tr", {}, ["Figure", "Mean", "Std dev", "Min", "Max"].map((t) => h("th", {}, t)))),
      h("tbody", {}, Object.entries(r.metrics).map(([name, m]) => h("tr", { "data-figure": name },
        h("td", {}, name), h("td", {}, fmtNum(m.mean, 4)), h("td", {}, fmtNum(m.stdev, 4)), h("td", {}, fmtNum(m.min, 4)), h("td", {}, fmtNum(m.max, 4)))))))];
}

// A certificate the live stream has announced reaches the read models a moment later (the writer appends and
// projects it after the certify stage published it): a 404 is asked again for a few seconds before it shows.
const FRESH_TRIES = 40;
const FRESH_MS = 250;

async function loadCertificate(main, certId) {
  const here = location.hash;
  const waiting = h("p.muted#certificate-waiting", {}, "Waiting for the certificate…");
  try {
    for (let tries = 1; ; tries++) {
      try {
        return await api(`certificates/${encodeURIComponent(certId)}`, { auth: false });
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 404 || tries >= FRESH_TRIES) throw e;
      }
      if (!waiting.isConnected) main.append(waiting);
      await new Promise((resolve) => setTimeout(resolve, FRESH_MS));
      if (location.hash !== here) return null; // the reader went elsewhere meanwhile
    }
  } finally {
    waiting.remove();
  }
}

export async function certificatePage(main, certId) {
  const enc = encodeURIComponent(certId);
  const cert = await loadCertificate(main, certId);
  if (cert === null) return;
  const mine = new Map(); // replay id → my rating
  if (token()) {
    try {
      const ratings = await api(`ratings?${query({ certificate_id: certId, user_id: claims()?.sub, limit: 100 })}`);
      for (const r of ratings.ratings) mine.set(r.replay_id, r.rating);
    } catch {
      /* ratings are a nicety here */
    }
  }
  const key = cert.signature ? await signingKey(cert.signature.key_id) : null;
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
          ` hash ${result.hash_ok ? "matches" : "does NOT match"}, aggregates ${result.aggregates_ok ? "match" : "do NOT match"} the replay scores, `,
          h("span#signature-check", { "data-ok": String(result.signature_ok) },
            result.signature_ok ? `signature checks out with key ${short(result.key_id ?? "", 12)}` : "signature does NOT check out (or the certificate is unsigned)"));
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
    cert.rescored_from
      ? h("p#rescored-from", {}, "A rescore of ", h("a.mono", { href: `#/certificates/${encodeURIComponent(cert.rescored_from)}` }, cert.rescored_from),
          ": the same logged oracle replies, scored again (no oracle call).")
      : null,
    h("div.cards#metrics", {}, METRICS.map(([key, label]) =>
      h("div.card", { "data-metric": key }, h("span.muted", {}, label), h("b", {}, key.endsWith("_count") || key === "sample_size" ? String(cert[key]) : fmtNum(cert[key], 4)),
        intervalOf(cert, key)))),
    uncertaintyNote(cert),
    repeatSpread(cert),
    compareForm(cert.id),
    h("p", {}, "Judge ", h("b", {}, cert.scoring_model), " · ground truth ", cert.ground_truth_source, " ",
      h("span.mono", {}, cert.commit_range), " · methodology ", cert.methodology_version,
      " · weights ", h("span.mono", {}, JSON.stringify(cert.weights))),
    h("h2", {}, "Oracle"), oracleFacts(cert.oracle),
    h("h2", {}, "Content hash and signature"),
    h("p", {}, h("code#content-hash", {}, cert.content_hash), " ", verifyButton, " ", verdict),
    signatureFacts(cert.signature, key),
    h("h2", {}, "Replays"),
    scroller(h("table#replays", {},
      h("thead", {}, h("tr", {}, ["Replay", "Ground truth", "Precision", "Recall", "Reply acc.", "Claims", "Changes", "Judge ms", "Your rating (1–5)"].map((t) => h("th", {}, t)))),
      h("tbody", {}, cert.replay_scores.map((s) => h("tr", { "data-replay": s.id },
        h("td.mono", {}, s.id), h("td.mono", {}, s.ground_truth_id), h("td", {}, fmtNum(s.precision)), h("td", {}, fmtNum(s.recall)),
        h("td", {}, fmtNum(s.reply_accuracy)), h("td", {}, `${s.claims_supported}/${s.claims_total}`),
        h("td", {}, `${s.changes_surfaced}/${s.changes_total}`), h("td", {}, fmtNum(s.scoring_latency_ms, 1)), h("td", {}, rating(s.id))))))),
    cert.failed_replays.length
      ? [h("h2", {}, "Failed replays"), scroller(h("table#cert-failed", {}, h("tbody", {}, cert.failed_replays.map((f) =>
          h("tr", {}, h("td.mono", {}, f.replay_id), h("td.mono", {}, f.ground_truth_id), h("td", {}, f.stage), h("td", {}, f.reason))))))]
      : null,
  ));
  verifyButton.click(); // say at once whether the API finds it valid; the button checks again
}

const FIGURE_NAMES = {
  composite_score: "Composite", precision: "Precision", recall: "Recall", reply_accuracy: "Reply accuracy",
  brier_score: "Calibration Brier", expected_calibration_error: "Calibration ECE",
};

/** Two certificates side by side: each one's figures, and B − A with its interval and test. */
export async function comparePage(main, a, b) {
  const [certA, certB, cmp] = await Promise.all([
    api(`certificates/${encodeURIComponent(a)}`, { auth: false }),
    api(`certificates/${encodeURIComponent(b)}`, { auth: false }),
    api(`certificates/compare?${query({ a, b })}`, { auth: false }),
  ]);
  const side = (cert, label) => h(`div.card.compare-side`, { "data-side": label },
    h("span.muted", {}, label), h("b", {}, h("a.mono", { href: `#/certificates/${cert.id}` }, cert.id)),
    h("span", {}, `${cert.construct_id} · ${cert.replay_count} replays · ${cert.scoring_model}`));
  const stated = (cert, key) => {
    const value = key === "brier_score" || key === "expected_calibration_error" ? cert.calibration?.[key] : cert[key];
    return [fmtNum(value, 4), " ", intervalOf(cert, key)];
  };
  main.append(h("div#compare", {},
    h("h1", {}, "Compare certificates"),
    h("div.cards", {}, side(certA, "A (baseline)"), side(certB, "B")),
    h("p#compare-kind", { "data-paired": String(cmp.paired) }, cmp.paired
      ? `Paired over the ${cmp.shared_changes} ground-truth changes both runs scored (${cmp.a_only} only in A, ${cmp.b_only} only in B).`
      : h("b", {}, `Unpaired: ${cmp.note}.`)),
    scroller(h("table#compare-figures", {},
      h("thead", {}, h("tr", {}, ["Figure", "A (certificate)", "B (certificate)", "A", "B", "B − A", "95% interval", "p"].map((t) => h("th", {}, t)))),
      h("tbody", {}, cmp.figures.map((f) => h("tr", { "data-figure": f.figure },
        h("td", {}, FIGURE_NAMES[f.figure] || f.figure), h("td", {}, stated(certA, f.figure)), h("td", {}, stated(certB, f.figure)),
        h("td", {}, fmtNum(f.a, 4)), h("td", {}, fmtNum(f.b, 4)),
        h("td", { "data-sign": f.difference < 0 ? "down" : f.difference > 0 ? "up" : "same" }, `${f.difference >= 0 ? "+" : ""}${fmtNum(f.difference, 4)}`),
        h("td", {}, `[${fmtNum(f.low, 4)}, ${fmtNum(f.high, 4)}]`), h("td", {}, fmtNum(f.p_value, 4))))))),
    h("p.muted", {}, `A and B columns: over the ${cmp.paired ? "shared changes" : "runs' replays"}. Method: ${cmp.method} (${cmp.exact ? "exact" : `${cmp.permutations} permutations`}, seed ${cmp.seed}).`)));
}

/** "Compare with …" on a certificate's page: goes to #/compare/A/B. */
function compareForm(certId) {
  const other = h("input#compare-with", { placeholder: "baseline certificate id (A)" });
  return h("form.inline#compare-form", { onsubmit: (e) => {
    e.preventDefault();
    const a = other.value.trim();
    if (a) location.hash = `#/compare/${encodeURIComponent(a)}/${encodeURIComponent(certId)}`;
  } }, h("label", {}, "Compare with", other), h("button", { type: "submit" }, "Compare"));
}
