"""Invoke: ask the judge for a follow-up question, then call the oracle for one change."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    OracleSpec,
    Payload,
    ReplayInvoked,
    ReplayRequested,
    make_event,
)
from echelon_platform.errors import OracleError, OracleRefused, RequestRejected, ScoringError
from pipeline_workers.handlers.context import StageContext
from pipeline_workers.handlers.guards import log_skip
from pipeline_workers.handlers.replay_failure import GivesUpOnTheReplay
from pipeline_workers.handlers.rescore import invoke_from_log
from pipeline_workers.oracles.base import Oracle
from pipeline_workers.oracles.http import HttpOracle
from pipeline_workers.oracles.python import PythonOracle
from pipeline_workers.scoring.base import Scorer, usage_of

PAYLOAD_HEADROOM = 8 * 1024  # room for headers and the subject within max_payload


class InvokeHandler(GivesUpOnTheReplay):
    stage = "invoke"
    topic = ReplayRequested.TOPIC

    def __init__(self, ctx: StageContext, scorer: Scorer) -> None:
        self.ctx = ctx
        self.scorer = scorer

    async def _oracle(self, spec: OracleSpec, secret_ref: str | None) -> Oracle:
        if spec.type == "python":
            return PythonOracle(
                str(spec.module),
                str(spec.callable),
                self.ctx.settings.oracle_allowlist,
                timeout_s=spec.timeout_s,
                pool=self.ctx.oracle_pool,
            )
        secrets = await self.ctx.secrets.get(secret_ref)
        headers = {k: v.get_secret_value() for k, v in secrets.oracle_headers.items()}
        return HttpOracle(
            str(spec.url),
            headers=headers,
            timeout_s=spec.timeout_s,
            client=self.ctx.http,
            allow_private=self.ctx.settings.allow_private_oracles,
            limits=self.ctx.oracle_limits,
        )

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        assert isinstance(payload, ReplayRequested)
        # The judge's question and the oracle call cost money and time: never for a run that is over,
        # nor again for a replay whose outcome the log already holds (a redelivery after a lost ack).
        outcome_keys = [f"verify.replay.invoked:{payload.replay_id}", f"verify.replay.failed:{payload.replay_id}"]
        skip = await self.ctx.guard.skip_reason(payload.run_id, outcome_keys)
        if skip is not None:
            log_skip(self.stage, payload.run_id, skip)
            return []
        if payload.rescore_of is not None:  # a rescore: the source run's logged reply, no oracle, no question
            source = (await self.ctx.run_request(payload.run_id)).rescore
            if source is None:  # only the ingest of a rescore run names a source replay
                return self.give_up(envelope, payload, "the replay names a source replay but its run is no rescore")
            return await invoke_from_log(self.ctx.log, source.source_run_id, payload, causation_id=envelope.event_id)
        spec, secret_ref = payload.oracle, payload.secret_ref
        if spec is None:  # logged before replay requests carried the oracle
            request = await self.ctx.run_request(payload.run_id)
            spec, secret_ref = request.oracle, request.secret_ref
        record = payload.record
        calls = self.ctx.judge_ledger_for(payload, causation_id=envelope.event_id)
        try:
            # The question's outcome is acknowledged while the oracle works (`settle` waits for it).
            question, _ = await self.scorer.follow_up_question(record, calls=calls)
            oracle = await self._oracle(spec, secret_ref)
            started = time.perf_counter()
            reply = await oracle.invoke(record, question)
            latency_ms = (time.perf_counter() - started) * 1000
        except (OracleError, OracleRefused, RequestRejected, ScoringError) as exc:
            # The judge calls were made (and paid for) even though the replay failed: all of them are logged.
            await calls.settle()
            logged, _ = calls.remaining()
            return [*logged, *self.give_up(envelope, payload, str(exc))]
        except BaseException:
            with contextlib.suppress(Exception):  # the handler's own failure is the one to report
                await asyncio.shield(calls.settle())  # what was sent is still acknowledged
            raise
        await calls.settle()
        logged, keys = calls.remaining()
        usage = usage_of(calls)
        invoked = [
            make_event(
                ReplayInvoked(
                    run_id=payload.run_id,
                    replay_id=payload.replay_id,
                    record=record,
                    question=question,
                    reply=reply,
                    latency_ms=round(latency_ms, 3),
                    question_input_tokens=usage.input_tokens,
                    question_output_tokens=usage.output_tokens,
                    question_cost_usd=usage.cost_usd,
                    question_calls=keys,
                    repeat=payload.repeat,
                    judge_terms=payload.judge_terms,
                ),
                causation_id=envelope.event_id,
            )
        ]
        # A reply that cannot travel (above the server's max_payload) fails now, once: retrying would only
        # pay for the oracle and the judge again and fail the same way.
        size = len(invoked[0].to_wire())
        limit = self.ctx.publisher.max_payload - PAYLOAD_HEADROOM
        if size > limit:
            return [
                *logged,
                *self.give_up(
                    envelope, payload, f"oracle reply too large: the replay is {size} bytes, the limit is {limit}"
                ),
            ]
        return [*logged, *invoked]
