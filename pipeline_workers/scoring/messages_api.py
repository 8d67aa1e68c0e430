"""The Anthropic Messages API: one `POST /v1/messages` per call, over one aiohttp session per judge.

Not through the Anthropic SDK: the scorer reads an answer's JSON itself (`answer_of`) and builds its requests
as plain dicts, so all the SDK would add is its request path, and that path is most of a judge call's CPU.
`python scripts/bench_judge_call_cpu.py` (200 calls at once, same run, same fake provider): about 0.8 ms of
CPU per call through the SDK (httpx2), 0.6 through the SDK on its aiohttp transport, 0.17 here. When a stage
launches a hundred calls together, that CPU is how long the last one waits before it leaves.

What the SDK did that matters here is kept: the API version and key headers, its timeouts (10 minutes, 5 s
to connect), and an error's type and message read from the API's error body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from echelon_platform.errors import ScoringError

API_VERSION = "2026-10-21"  # the version the scorer's requests (no sampling parameters) are written for
DEFAULT_BASE_URL = "https://api.anthropic.com"
TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """An HTTP answer of the API, whatever its status."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def error(self) -> tuple[str | None, str | None]:
        """The error's type and message from an error body (`{"type": "error", "error": {...}}`), else None."""
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None, None
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return None, None
        kind, message = error.get("type"), error.get("message")
        return (kind if isinstance(kind, str) else None), (message if isinstance(message, str) else None)


class JudgeStatusError(ScoringError):
    """The API answered with an error status."""

    def __init__(self, answer: ApiAnswer) -> None:
        self.status = answer.status
        self.headers = answer.headers
        self.kind, self.api_message = answer.error()
        super().__init__(f"HTTP {answer.status}")


class JudgeUnreachable(ScoringError):
    """No answer: the connection failed or the call ran out of time (`timed_out`)."""

    def __init__(self, detail: str, *, timed_out: bool) -> None:
        super().__init__(detail)
        self.timed_out = timed_out


# The HTTP exchange itself (url, headers, body → answer): aiohttp here, a fake at the HTTP boundary in tests.
Send = Callable[[str, Mapping[str, str], bytes], Awaitable[ApiAnswer]]


class MessagesClient:
    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        send: Send | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._url = f"{self.base_url}/v1/messages"
        self._headers = {
            "x-api-key": api_key,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._send = send or self._post
        self._proxy = _env_proxy(self._url)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:  # holds the key: never let it near a log line
        return f"MessagesClient(base_url={self.base_url!r})"

    async def create(self, request: Mapping[str, object]) -> ApiAnswer:
        """Send one Messages request; JudgeStatusError for an error status, JudgeUnreachable for no answer."""
        answer = await self._send(self._url, self._headers, orjson.dumps(request))
        if not 200 <= answer.status < 300:
            raise JudgeStatusError(answer)
        return answer

    async def _post(self, url: str, headers: Mapping[str, str], body: bytes) -> ApiAnswer:
        if self._closed:
            raise JudgeUnreachable("APIConnectionError: the judge's client is closed", timed_out=False)
        if self._session is None or self._session.closed:  # opened in the loop that uses it
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60),
                timeout=self._timeout,
                raise_for_status=False,
                skip_auto_headers=("User-Agent",),
                trust_env=False,  # the environment's proxy is read once (`_env_proxy`), not per request
            )
        try:
            async with self._session.post(url, data=body, headers=headers, proxy=self._proxy) as response:
                return ApiAnswer(response.status, response.headers, await response.read())
        except TimeoutError as exc:  # aiohttp's own time-outs are TimeoutErrors too
            raise JudgeUnreachable("APITimeoutError", timed_out=True) from exc
        except aiohttp.ClientError as exc:
            raise JudgeUnreachable(f"APIConnectionError: {type(exc).__name__}", timed_out=False) from exc

    @property
    def endpoint(self) -> str:
        """The endpoint's name for its shared limit: the base URL as the SDK spelled it (a trailing slash), so
        the limit learned by earlier workers stays the same one."""
        return f"{self.base_url}/"

    async def close(self) -> None:
        self._closed = True  # a call starting meanwhile does not open a session nobody would close
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _env_proxy(url: str) -> URL | None:
    """The proxy HTTP(S)_PROXY / NO_PROXY (and ~/.netrc for its credentials) choose for `url`, read once.

    aiohttp's `trust_env` reads them again on every request, in a thread, parsing ~/.netrc each time: about a
    tenth of a score worker's CPU when a hundred judge calls are in flight. The environment is the process's
    start-up configuration, so reading it when the client is made gives the same proxy. Its credentials go
    back into its URL, where aiohttp sends them as Proxy-Authorization (plain or CONNECT)."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:  # no proxy for this scheme, or NO_PROXY names the host
        return None
    return proxy if auth is None else proxy.with_user(auth.login).with_password(auth.password)
