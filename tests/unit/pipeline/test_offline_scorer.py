from __future__ import annotations

from pathlib import Path

from echelon_platform.domain.values import GroundTruthRecord, JudgeUsage, OracleReply
from pipeline_workers.ingest.base import SourceSpec
from pipeline_workers.ingest.local_git import LocalGitIngester
from pipeline_workers.oracles.base import build_request, parse_reply
from pipeline_workers.oracles.sample import summarise
from pipeline_workers.scoring.lexical import tokens
from pipeline_workers.scoring.offline import OfflineLexicalScorer, question_for

UNRELATED = OracleReply(
    summary="Improves the weather forecast module and the rain radar.",
    key_claims=["Adds a precipitation predictor", "Updates the cloud cover model", "Removes the analog barometer"],
    follow_up_response="It predicts rain from humidity readings.",
)


def faithful(record: GroundTruthRecord) -> OracleReply:
    return OracleReply(
        summary="Adds a truncate(text, width, suffix) helper to textkit/text.py and exports truncate and "
        "word_count from textkit/__init__.py.",
        key_claims=[
            "Adds function truncate in textkit/text.py",
            "truncate appends the suffix when text is longer than width",
            "textkit/__init__.py exports word_count and truncate",
        ],
        follow_up_response="When len(text) <= width, truncate returns the text unchanged; otherwise it keeps "
        "width - len(suffix) characters and appends the suffix.",
    )


def test_tokens_split_identifiers_and_drop_stopwords() -> None:
    assert tokens("Adds word_count to textkit/text.py") == {"word_count", "word", "count", "textkit", "text"}
    assert tokens("parseHTTPResponse counts") == {"parsehttpresponse", "parse", "http", "response", "count"}


async def test_faithful_summary_beats_unrelated_one(record: GroundTruthRecord) -> None:
    judge = OfflineLexicalScorer()
    question = question_for(record)
    good = await judge.score("r1", record, faithful(record), question=question)
    bad = await judge.score("r1", record, UNRELATED, question=question)

    assert good.precision == 1.0 and bad.precision == 0.0
    assert good.recall > bad.recall == 0.0
    assert good.reply_accuracy > bad.reply_accuracy == 0.0
    assert (good.claims_total, good.changes_total) == (3, 3)  # 2 files + the truncate definition
    assert good.scoring_model == "offline-lexical-v1"
    assert (good.input_tokens, good.output_tokens, good.cost_usd) == (0, 0, 0.0)


async def test_deterministic(record: GroundTruthRecord) -> None:
    judge = OfflineLexicalScorer()
    question, usage = await judge.follow_up_question(record)
    assert question == "What does `truncate` in textkit/text.py do, and how does this change use it?"
    assert usage == JudgeUsage()
    first = await judge.score("r1", record, faithful(record), question=question)
    second = await OfflineLexicalScorer().score("r1", record, faithful(record), question=question)
    volatile = {"scoring_latency_ms", "scored_at"}
    assert first.model_dump(exclude=volatile) == second.model_dump(exclude=volatile)


async def test_empty_claims_score_zero_precision(record: GroundTruthRecord) -> None:
    silent = OracleReply(summary="", key_claims=[], follow_up_response="")
    result = await OfflineLexicalScorer().score("r1", record, silent)
    assert (result.precision, result.recall, result.reply_accuracy) == (0.0, 0.0, 0.0)


async def test_sample_oracle_on_real_history_outscores_an_unrelated_oracle(sample_repo: Path) -> None:
    records = (await LocalGitIngester().fetch(SourceSpec(repo_url=str(sample_repo)))).records
    judge = OfflineLexicalScorer()
    good_total = bad_total = 0.0
    for rec in records:
        question, _ = await judge.follow_up_question(rec)
        reply = parse_reply(summarise(build_request(rec, question)))
        good = await judge.score(rec.id, rec, reply, question=question)
        bad = await judge.score(rec.id, rec, UNRELATED, question=question)
        assert good.precision >= bad.precision and good.recall >= bad.recall
        good_total += good.precision + good.recall + good.reply_accuracy
        bad_total += bad.precision + bad.recall + bad.reply_accuracy
    assert good_total > 2 * len(records) * 0.5  # well above chance on average
    assert bad_total == 0.0
