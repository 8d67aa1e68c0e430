"""Oracles that are Python callables in the worker's own process, gated by an allowlist.

Importing a module runs its code with the worker's privileges, so only targets an operator listed in
``ECHELON_ORACLE_ALLOWLIST`` may be used; the check is pure so the API can run it at request time.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Collection
from typing import Any

from echelon_platform.domain.oracle_targets import check_callable_allowed, parse_target
from echelon_platform.domain.values import GroundTruthRecord, OracleReply
from echelon_platform.errors import OracleError
from pipeline_workers.oracles.base import build_request, parse_reply


class PythonOracle:
    def __init__(
        self,
        module: str,
        callable_name: str,
        allowlist: Collection[str],
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.target = f"{module}:{callable_name}"
        check_callable_allowed(self.target, allowlist)
        self._module = module
        self._name = callable_name
        self._timeout = timeout_s
        self._fn: Callable[..., Any] | None = None

    @classmethod
    def from_target(cls, target: str, allowlist: Collection[str], *, timeout_s: float = 30.0) -> PythonOracle:
        module, name = parse_target(target)
        return cls(module, name, allowlist, timeout_s=timeout_s)

    def _load(self) -> Callable[..., Any]:
        # Imported lazily, on the worker, so the API process never runs oracle code.
        if self._fn is None:
            try:
                module = importlib.import_module(self._module)
            except Exception as exc:
                raise OracleError(f"cannot import oracle module {self._module!r}: {type(exc).__name__}: {exc}") from exc
            fn = getattr(module, self._name, None)
            if not callable(fn):
                raise OracleError(f"{self.target} is not a callable")
            self._fn = fn
        return self._fn

    async def invoke(self, record: GroundTruthRecord, follow_up_question: str) -> OracleReply:
        fn = self._load()
        request = build_request(record, follow_up_question)
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                if _is_async(fn):
                    result = await fn(request)
                else:
                    # Sync code must not block the event loop. A thread cannot be killed, so on timeout
                    # we stop waiting for it; the thread finishes (or not) in the background.
                    result = await asyncio.to_thread(fn, request)
                    if inspect.isawaitable(result):
                        result = await result
        except TimeoutError as exc:
            if deadline.expired():  # ours, not a TimeoutError the callable raised itself
                raise OracleError(f"oracle {self.target} timed out after {self._timeout:g}s") from exc
            raise OracleError(f"oracle {self.target} raised TimeoutError: {str(exc)[:300]}") from exc
        except OracleError:
            raise
        except Exception as exc:
            raise OracleError(f"oracle {self.target} raised {type(exc).__name__}: {str(exc)[:300]}") from exc
        return parse_reply(result)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
