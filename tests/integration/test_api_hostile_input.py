"""Hostile input on real NATS/Postgres/Redis: every answer is a 4xx with a reason, never a 500, never a
secret echoed back, and the connection keeps serving. (Seen before: NaN → 500 and the next request on the
connection reset; a lone-surrogate `sub` → 500; a 422 repeating an oracle header's value; weights of 1e308
accepted.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from api.json_body import MAX_JSON_DEPTH
from echelon_platform.config import Settings
from tests.integration.test_api_support import API, app, auth, client, options, serve

__all__ = ["app", "client", "options"]  # fixtures

RUN = {
    "repo_url": "https://github.com/acme/widgets",
    "construct_id": "oracle-a",
    "oracle_type": "python",
    "oracle_module": "pipeline_workers.oracles.sample",
    "oracle_callable": "summarise",
    "limit": 5,
}
SESSION = "/api/v1/auth/session"
JSON = {"Content-Type": "application/json"}
ATTACK = b"[" * 110_000 + b"]" * 110_000


def with_raw(body: bytes, field: str, literal: str) -> bytes:
    """The JSON of RUN with `field` set to a raw literal (json.dumps would refuse or quote it)."""
    return body[:-1] + f', "{field}": {literal}}}'.encode()


RUN_BYTES = httpx.Request("POST", "/", json=RUN).content


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (with_raw(RUN_BYTES, "oracle_timeout_s", "NaN"), "non-finite number"),
        (with_raw(RUN_BYTES, "oracle_timeout_s", "Infinity"), "non-finite number"),
        (with_raw(RUN_BYTES, "weights", '{"precision": -Infinity}'), "non-finite number"),
        (with_raw(RUN_BYTES, "weights", '{"recall": 1e999}'), "too large for a 64-bit float"),
        (with_raw(RUN_BYTES, "labels", '["\\udc00"]'), "not valid JSON"),
        (with_raw(RUN_BYTES, "labels", "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH), "deeper than 32 levels"),
        (ATTACK, "deeper than 32 levels"),
    ],
)
async def test_bad_json_is_422_with_a_reason_authenticated_or_not(
    client: httpx.AsyncClient, settings: Settings, body: bytes, why: str
) -> None:
    for path, headers in ((f"{API}/runs", {**JSON, **auth(settings, "alice")}), (SESSION, JSON)):
        answer = await client.post(path, content=body, headers=headers)
        assert answer.status_code == 422, (path, answer.text)
        assert why in answer.json()["detail"], answer.text
    # The same bodies, without a content type: FastAPI would not decode them, the guard checks them anyway.
    bare = await client.post(SESSION, content=body)
    assert bare.status_code == 422, bare.text


async def test_weights_must_be_finite_and_bounded(client: httpx.AsyncClient, settings: Settings) -> None:
    headers = auth(settings, "alice")
    answer = await client.post(f"{API}/runs", json={**RUN, "weights": {"precision": 1e308}}, headers=headers)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "weights", "precision"] and "less than or equal to 1000000" in error["msg"]
    fine = await client.post(f"{API}/runs", json={**RUN, "weights": {"precision": 1e6}}, headers=headers)
    assert fine.status_code == 201, fine.text


SECRET_VALUE = "Bearer sk-live-0123456789-do-not-echo"
GITHUB_TOKEN = "ghp_do_not_echo_0123456789"


@pytest.mark.parametrize(
    "run",
    [
        # A model-wide rule fails: FastAPI's default answer repeated the whole body as `input`.
        {**RUN, "oracle_type": "http", "oracle_headers": {"Authorization": SECRET_VALUE}, "github_token": GITHUB_TOKEN},
        # A bad oracle header value (a control character, or a final newline): its error repeated the value.
        *(
            {
                **RUN,
                "oracle_type": "http",
                "oracle_url": "https://oracle.example/api",
                "oracle_headers": {"Authorization": value},
                "github_token": GITHUB_TOKEN,
            }
            for value in (SECRET_VALUE.replace(" ", "\x01"), SECRET_VALUE + "\n")
        ),
        # Secret fields of the wrong type.
        {**RUN, "oracle_headers": {"X-Key": ["Bearer sk-live-0123456789-do-not-echo"]}, "github_token": 1234567890},
    ],
)
async def test_validation_errors_never_echo_secrets(
    client: httpx.AsyncClient, settings: Settings, run: dict[str, object]
) -> None:
    answer = await client.post(f"{API}/runs", json=run, headers=auth(settings, "alice"))
    assert answer.status_code == 422, answer.text
    for secret in ("sk-live-0123456789", "ghp_do_not_echo", "1234567890"):
        assert secret not in answer.text, answer.text
    errors = answer.json()["detail"]
    assert isinstance(errors, list), errors
    assert errors and all(e["loc"] and e["msg"] for e in errors)  # still says which field and why


async def test_non_secret_inputs_are_still_shown(client: httpx.AsyncClient, settings: Settings) -> None:
    answer = await client.post(f"{API}/runs", json={**RUN, "limit": 5000}, headers=auth(settings, "alice"))
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["input"] == 5000


def raw_token(payload: str, secret: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{b64(payload.encode())}"
    return f"{signing_input}.{b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())}"


async def test_hostile_tokens_are_401(client: httpx.AsyncClient, settings: Settings) -> None:
    secret = settings.jwt_secret.get_secret_value()
    later = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    tokens = {
        "not valid UTF-8": raw_token(f'{{"sub": "\\ud800", "exp": {later}}}', secret),
        "not a usable time": raw_token('{"sub": "alice", "exp": 1' + "0" * 400 + "}", secret),
        "reserved for wallet sign-in": jwt.encode(
            {"sub": "wallet:0x5B38Da6a701c568545dCfcB03FcB875f56beddC4", "exp": later}, secret
        ),
    }
    for why, token in tokens.items():
        answer = await client.get(f"{API}/runs", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401, (why, answer.text)
        assert why in answer.json()["detail"]


async def test_after_a_refused_body_the_same_connection_keeps_serving(app: object, settings: Settings) -> None:
    headers = auth(settings, "alice")
    async with serve(app) as host, httpx.AsyncClient(base_url=f"http://{host}", timeout=30) as http:  # type: ignore[arg-type]
        for body in (with_raw(RUN_BYTES, "oracle_timeout_s", "NaN"), ATTACK, b"[Infinity]"):
            refused = await http.post(f"{API}/runs", content=body, headers={**JSON, **headers})
            assert refused.status_code == 422, refused.text
            listed = await http.get(f"{API}/runs", headers=headers)  # keep-alive: the same connection
            assert listed.status_code == 200, listed.text
        created = await http.post(f"{API}/runs", json=RUN, headers=headers)
        assert created.status_code == 201, created.text
