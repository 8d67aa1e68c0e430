"""The API refuses to listen beyond loopback with the published development JWT secret."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from api.app import create_app
from echelon_platform.config import Settings
from echelon_platform.errors import ConfigError
from tests.cli import cli_env, run_cli


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"])
def test_loopback_with_the_dev_secret_is_allowed(host: str) -> None:
    Settings(api_host=host).check_api_exposure()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "api.example.com"])
def test_anywhere_else_needs_a_real_secret(host: str) -> None:
    with pytest.raises(ConfigError, match="ECHELON_JWT_SECRET"):
        Settings(api_host=host).check_api_exposure()
    Settings(api_host=host, jwt_secret=SecretStr("an operator's secret of 32 bytes")).check_api_exposure()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5"])
def test_beyond_loopback_the_secret_has_at_least_32_bytes(host: str) -> None:
    with pytest.raises(ConfigError, match="ECHELON_JWT_SECRET is 31 bytes; beyond loopback it must be at least 32"):
        Settings(api_host=host, jwt_secret=SecretStr("x" * 31)).check_api_exposure()
    Settings(api_host=host, jwt_secret=SecretStr("é" * 16)).check_api_exposure()  # bytes, not characters


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_an_empty_secret_is_refused_everywhere(host: str) -> None:
    # An empty HMAC key makes PyJWT refuse every token: with it, every Bearer request answered 500.
    with pytest.raises(ConfigError, match="ECHELON_JWT_SECRET is empty"):
        Settings(api_host=host, jwt_secret=SecretStr("")).check_api_exposure()


def test_a_short_secret_is_fine_on_loopback() -> None:
    Settings(api_host="127.0.0.1", jwt_secret=SecretStr("dev")).check_api_exposure()


@pytest.mark.parametrize("algorithm", ["RS256", "none", "ES256"])
def test_only_hmac_algorithms_can_be_configured(algorithm: str) -> None:
    # Tokens are signed with the shared secret: any other algorithm made PyJWT fail on every request.
    with pytest.raises(ValidationError, match="jwt_algorithm"):
        Settings(jwt_algorithm=algorithm)  # type: ignore[arg-type]


async def test_lifespan_refuses_before_serving() -> None:
    app = create_app(Settings(api_host="0.0.0.0"))
    with pytest.raises(ConfigError, match=r"refusing to serve the API on 0\.0\.0\.0"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.parametrize("command", [("api",), ("stack", "up")])
async def test_cli_refuses_with_one_line_and_a_non_zero_exit(tmp_path: Path, command: tuple[str, ...]) -> None:
    # Servers that do not answer: the refusal must come before anything tries to reach them.
    port = dead_port()
    env = cli_env(
        ECHELON_API_HOST="0.0.0.0",
        NATS_URL=f"nats://127.0.0.1:{port}",
        DATABASE_URL=f"postgresql://x@127.0.0.1:{port}/x",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
    )
    env.pop("ECHELON_JWT_SECRET", None)
    result = await run_cli(*command, cwd=tmp_path, env=env, timeout=30)
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("echelon: refusing to serve the API on 0.0.0.0") and "ECHELON_JWT_SECRET" in lines[0]


@pytest.mark.parametrize("command", [("api",), ("stack", "up")])
async def test_cli_refuses_an_empty_secret_with_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    port = dead_port()
    env = cli_env(
        ECHELON_API_HOST="0.0.0.0",
        ECHELON_JWT_SECRET="",
        NATS_URL=f"nats://127.0.0.1:{port}",
        DATABASE_URL=f"postgresql://x@127.0.0.1:{port}/x",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
    )
    result = await run_cli(*command, cwd=tmp_path, env=env, timeout=30)
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        "echelon: refusing to serve the API on 0.0.0.0: ECHELON_JWT_SECRET is empty and no token could be "
        "verified; set it to at least 32 random bytes (e.g. `openssl rand -hex 32`), or unset it on loopback"
    )
