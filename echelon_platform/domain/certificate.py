"""Pure certificate arithmetic: aggregate replay scores, hash the result, and verify stored certificates.

Everything here is a function of its inputs (the timestamp is passed in), so a redelivered "build the
certificate" message yields a byte-identical certificate with the same id and content hash.

Schema 2 certificates are hashed and signed over their RFC 8785 canonical JSON (without `content_hash` and
`signature`): anyone holding the issuer's public key can check one offline. Schema 1 certificates (before
signing) keep their original hash, over orjson's sorted-key form, so they still verify as unsigned.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from echelon_platform.domain.calibration import calibration_of
from echelon_platform.domain.canonical import CanonicalJSONError, canonicalize
from echelon_platform.domain.intervals import Composite, uncertainty_of
from echelon_platform.domain.scoring_rules import RUBRIC, precision_of, recall_of
from echelon_platform.domain.values import CalibrationCertificate, FailedReplay, OracleIdentity, ReplayScore
from echelon_platform.errors import RequestRejected, StageError

WEIGHT_KEYS = ("precision", "recall", "reply_accuracy")
# Weights are relative: this bound is far beyond any useful ratio and keeps every sum of weighted means
# finite (an unbounded 1e308 overflowed `fsum`, a failure no retry could fix).
MAX_WEIGHT = 1e6
DECIMALS = 6
SCHEMA_VERSION = 2
# How a replay the run's budget (`max_cost_usd`) left unjudged says so in its failure reason.
BUDGET_REASON = "judge budget exhausted"
# Fields schema 2 added: a schema-1 certificate is hashed as it was issued, without them.
_V2_FIELDS = frozenset({"oracle", "selection_policy", "calibration", "signature", "content_hash"})
_V2_SCORE_FIELDS = ("claim_supported", "claim_confidences")
_MAX_REASONS = 5


def validate_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Exactly the three weight keys (missing ones default to 1.0); RequestRejected when unusable."""
    given = dict(weights or {})
    unknown = sorted(set(given) - set(WEIGHT_KEYS))
    if unknown:
        raise RequestRejected(f"unknown weight(s) {unknown}: allowed keys are {', '.join(WEIGHT_KEYS)}")
    out: dict[str, float] = {}
    for key in WEIGHT_KEYS:
        value = given.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RequestRejected(f"weight {key!r} must be a finite number, got {value!r}")
        if value < 0:
            raise RequestRejected(f"weight {key!r} must not be negative, got {value}")
        if value > MAX_WEIGHT:
            raise RequestRejected(
                f"weight {key!r} must be at most {MAX_WEIGHT:,.0f} (weights are relative), got {value}"
            )
        out[key] = float(value)
    if not any(out.values()):
        raise RequestRejected("at least one weight must be positive: all weights are zero")
    return out


def weighted_composite(values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted mean of precision, recall and reply accuracy (unrounded); 0.0 when no weight is set."""
    total = math.fsum(weights.get(k, 0.0) for k in WEIGHT_KEYS)
    if total <= 0:
        return 0.0
    return math.fsum(weights.get(k, 0.0) * float(values[k]) for k in WEIGHT_KEYS) / total


def _aggregates(scores: Sequence[ReplayScore], weights: Mapping[str, float]) -> dict[str, float]:
    """Means, composite and Brier-style error, each rounded once, from unrounded intermediates."""
    n = len(scores)
    means = {
        "precision": math.fsum(s.precision for s in scores) / n,
        "recall": math.fsum(s.recall for s in scores) / n,
        "reply_accuracy": math.fsum(s.reply_accuracy for s in scores) / n,
    }
    composite = weighted_composite(means, weights)
    brier = (1.0 - composite) * 0.5
    return {
        **{k: round(v, DECIMALS) for k, v in means.items()},
        "composite_score": round(composite, DECIMALS),
        "brier": round(brier, DECIMALS),
    }


def _scoring_model(scores: Sequence[ReplayScore]) -> str:
    return "+".join(sorted({s.scoring_model for s in scores}))


JudgeMixing = Literal["flag", "refuse"]


def _judges_mixed(scores: Sequence[ReplayScore]) -> bool:
    return len({s.scoring_model for s in scores}) > 1


def build_certificate(
    *,
    run_id: str,
    construct_id: str,
    scores: list[ReplayScore],
    failed: list[FailedReplay],
    weights: Mapping[str, float] | None,
    min_replays: int,
    ground_truth_source: str,
    commit_range: str,
    methodology_version: str,
    timestamp: datetime,
    oracle: OracleIdentity | None = None,
    selection_policy: str | None = None,
    methodology_hash: str | None = None,
    judge_mixing: JudgeMixing = "flag",
    requested: int | None = None,
    found: int | None = None,
    shortfall: str | None = None,
    reused: Sequence[str] = (),
    budget_usd: float | None = None,
    intervals: bool = True,
) -> CalibrationCertificate:
    """Aggregate one run into a hashed certificate; StageError when no replay succeeded.

    Redelivery tolerance: duplicate scores for a replay keep the earliest, and a replay that has a
    score is not also listed as failed (it failed once, then succeeded on retry).

    Replays scored by different judges (a fallback judge took over) are compared on different scales:
    ``judge_mixing="refuse"`` raises StageError, ``"flag"`` sets ``mixed_judges`` and a warning.

    Ground truth shorter than asked for (``found`` < ``requested`` changes at ingest) is partial too: a
    certificate over 10 changes for a request of 20 must not look complete.

    ``intervals``: add n and a 95% bootstrap interval per figure (intervals.py); False rebuilds a certificate
    issued before intervals existed exactly as it was.
    """
    try:
        checked = validate_weights(weights)
    except RequestRejected as exc:  # logged before the bound existed: the same answer on every delivery
        raise StageError(f"the run's weights cannot be used: {exc}") from exc
    unique = _dedupe_scores(scores)
    scored_ids = {s.replay_id for s in unique}
    failures = sorted(
        {f for f in failed if f.replay_id not in scored_ids},
        key=lambda f: (f.replay_id, f.stage, f.reason, f.ground_truth_id),
    )
    if not unique:
        raise StageError("All replays failed: " + _failure_summary(failures))
    short_ground_truth = requested is not None and found is not None and found < requested
    # Replays the run's budget left unjudged (their failure says so): the certificate covers the others only.
    unbudgeted = [f for f in failures if BUDGET_REASON in f.reason] if budget_usd is not None else []
    partial = len(unique) < min_replays or short_ground_truth or bool(unbudgeted)
    mixed = _judges_mixed(unique)
    if mixed and judge_mixing == "refuse":
        raise StageError(
            f"replays were scored by different judges ({_scoring_model(unique)}) and judge mixing is refused"
        )
    warnings = []
    if short_ground_truth:
        warnings.append(f"found {found} of the {requested} changes asked for ({shortfall or 'no reason recorded'})")
    if len(unique) < min_replays:
        warnings.append(
            f"only {len(unique)} of the {min_replays} required replays succeeded "
            f"({len(failures)} failed); the scores rest on a smaller sample than requested"
        )
    if unbudgeted:
        warnings.append(
            f"the run's budget of {budget_usd:g} USD stopped judging: {len(unbudgeted)} replay(s) were not judged"
        )
    if mixed:
        warnings.append(
            f"replays were scored by different judges ({_scoring_model(unique)}); see each score's scoring_model"
        )
    warning = "; ".join(warnings) or None
    agg = _aggregates(unique, checked)
    cert = CalibrationCertificate(
        schema_version=SCHEMA_VERSION,
        certificate_id=f"cert-{run_id}",
        run_id=run_id,
        construct_id=construct_id,
        precision=agg["precision"],
        recall=agg["recall"],
        reply_accuracy=agg["reply_accuracy"],
        composite_score=agg["composite_score"],
        brier=agg["brier"],
        weights=checked,
        replay_count=len(unique),
        sample_size=len(unique),
        timestamp=timestamp,
        ground_truth_source=ground_truth_source,
        commit_range=commit_range,
        methodology_version=methodology_version,
        scoring_model=_scoring_model(unique),
        individual_scores=unique,
        failed_replays=failures,
        partial=partial,
        warning=warning,
        oracle=oracle,
        selection_policy=selection_policy,
        calibration=calibration_of(unique),
        methodology_hash=methodology_hash,
        mixed_judges=mixed,
        reused_judge_answers=sorted(set(reused) & scored_ids) or None,
        budget_usd=budget_usd if unbudgeted else None,
        uncertainty=uncertainty_of(unique, composite_with(checked), run_id) if intervals else None,
    )
    return cert.model_copy(update={"content_hash": content_hash(cert)})


def composite_with(weights: Mapping[str, float]) -> Composite:
    return lambda means: weighted_composite(means, weights)


def _dedupe_scores(scores: Sequence[ReplayScore]) -> list[ReplayScore]:
    chosen: dict[str, ReplayScore] = {}
    # Sorting by the full canonical form makes the choice independent of arrival order.
    for score in sorted(scores, key=lambda s: (s.replay_id, s.scored_at, _canonical(s.model_dump(mode="json")))):
        chosen.setdefault(score.replay_id, score)
    return [chosen[k] for k in sorted(chosen)]


def _failure_summary(failures: Sequence[FailedReplay]) -> str:
    if not failures:
        return "no replays were recorded"
    counts = Counter(f"{f.stage}: {f.reason[:200]}" for f in failures)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{n}x {reason}" if n > 1 else reason for reason, n in ranked[:_MAX_REASONS]]
    if len(ranked) > _MAX_REASONS:
        parts.append(f"and {len(ranked) - _MAX_REASONS} other reason(s)")
    return "; ".join(parts)


def _canonical(data: object) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def signed_content(document: Mapping[str, object]) -> bytes:
    """The bytes a schema-2 certificate's hash and signature cover: RFC 8785 of the JSON document
    without `content_hash` and `signature`. Takes the JSON as published, so a verifier needs no model."""
    return canonicalize({k: v for k, v in document.items() if k not in ("content_hash", "signature")})


def _legacy_document(cert: CalibrationCertificate) -> dict[str, object]:
    data = cert.model_dump(mode="json", exclude=set(_V2_FIELDS))
    for score in data["individual_scores"]:
        for key in _V2_SCORE_FIELDS:
            score.pop(key, None)
    return data


def content_hash(cert: CalibrationCertificate) -> str:
    """SHA-256 hex of the certificate's canonical form (RFC 8785 for schema 2, orjson for schema 1)."""
    if cert.schema_version < 2:
        return hashlib.sha256(_canonical(_legacy_document(cert))).hexdigest()
    return hashlib.sha256(signed_content(cert.model_dump(mode="json"))).hexdigest()


def document_hash(document: Mapping[str, object]) -> str:
    """The content hash computed from a published JSON document (schema 2)."""
    return hashlib.sha256(signed_content(document)).hexdigest()


def verify_certificate(cert: CalibrationCertificate) -> tuple[bool, bool]:
    """(hash_ok, aggregates_ok): is the stored hash right, and do the stored aggregates follow from the
    stored individual scores and weights (including each score's ratios from its own counts)?"""
    try:
        hash_ok = hmac.compare_digest(cert.content_hash, content_hash(cert))
    except CanonicalJSONError:
        hash_ok = False
    return hash_ok, _aggregates_ok(cert)


def signature_ok(document: Mapping[str, object], public_keys: Mapping[str, bytes]) -> bool:
    """Does the document carry an Ed25519 signature, by one of ``public_keys`` (key id → raw 32-byte
    public key), over its signed content? Unsigned, unknown-key and malformed signatures are all False."""
    sig = document.get("signature")
    if not isinstance(sig, Mapping) or sig.get("algorithm") != "Ed25519":
        return False
    raw_key = public_keys.get(str(sig.get("key_id")))
    if raw_key is None:
        return False
    try:
        value = base64.urlsafe_b64decode(_padded(str(sig.get("value", ""))))
        Ed25519PublicKey.from_public_bytes(raw_key).verify(value, signed_content(document))
    except (InvalidSignature, ValueError, binascii.Error, CanonicalJSONError):
        return False
    return True


def _padded(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def _aggregates_ok(cert: CalibrationCertificate) -> bool:
    scores = cert.individual_scores
    if not scores or len({s.replay_id for s in scores}) != len(scores):
        return False
    try:
        weights = validate_weights(cert.weights)
    except RequestRejected:
        return False
    if weights != cert.weights or not all(_score_consistent(s) for s in scores):
        return False
    expected = _aggregates(scores, weights)
    stored = {key: getattr(cert, key) for key in expected}
    if cert.schema_version >= 2 and cert.calibration != calibration_of(scores):
        return False
    if cert.uncertainty is not None and cert.uncertainty != uncertainty_of(
        scores, composite_with(weights), cert.run_id
    ):
        return False
    return (
        stored == expected
        and cert.replay_count == cert.sample_size == len(scores)
        and cert.scoring_model == _scoring_model(scores)
        and (cert.mixed_judges is None or cert.mixed_judges == _judges_mixed(scores))
    )


def _score_consistent(s: ReplayScore) -> bool:
    return (
        s.claims_supported <= s.claims_total
        and s.changes_surfaced <= s.changes_total
        and math.isclose(s.precision, precision_of(s.claims_supported, s.claims_total), abs_tol=1e-9)
        and math.isclose(s.recall, recall_of(s.changes_surfaced, s.changes_total), abs_tol=1e-9)
        and s.reply_accuracy in RUBRIC
        and (
            s.claim_supported is None
            or (len(s.claim_supported) <= s.claims_total and sum(s.claim_supported) == s.claims_supported)
        )
        and (s.claim_confidences is None or all(0.0 <= c <= 1.0 for c in s.claim_confidences))
    )
