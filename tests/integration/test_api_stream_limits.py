"""What an unauthenticated WebSocket may cost, on a real uvicorn server configured as `echelon api` and
`stack up` configure it: sockets not yet authenticated are capped (in all and per client address), and
the first message is bounded (1009) however large the client makes it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from echelon.http_server import api_server_config
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.helpers import wait_for
from tests.integration.test_api_support import free_port, token

DEADLINE_S = 15.0


@asynccontextmanager
async def limited_server(settings: Settings, services: Services, **limits: int) -> AsyncIterator[str]:
    """The app under uvicorn as `echelon api` and `stack up` configure it (api_server_config)."""
    tuned = settings.model_copy(update={**limits, "api_port": free_port()})
    server = uvicorn.Server(api_server_config(create_app(tuned, services), tuned, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), timeout=10, what="uvicorn to start")
        assert not task.done(), "uvicorn exited at start-up"
        yield f"127.0.0.1:{tuned.api_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@asynccontextmanager
async def client(host: str, source: str = "127.0.0.1") -> AsyncIterator[ClientConnection]:
    """A connected client whose socket is bound to `source` (any 127.0.0.0/8 address is loopback)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    name, port = host.split(":")
    await asyncio.get_running_loop().sock_connect(sock, (name, int(port)))
    async with connect(f"ws://{host}/api/v1/stream", sock=sock, max_size=None) as ws:
        yield ws


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def authenticated(ws: ClientConnection, settings: Settings, user: str) -> None:
    await ws.send(orjson.dumps({"token": token(settings, user)}).decode())
    async with asyncio.timeout(DEADLINE_S):
        hello = orjson.loads(await ws.recv())
    assert hello["type"] == "authenticated" and hello["userId"] == user


async def test_unauthenticated_sockets_are_capped_per_address(settings: Settings, services: Services) -> None:
    """The bug: sockets that never authenticate were not counted (400 opened in 0.7 s)."""
    server = limited_server(settings, services, ws_max_unauthenticated_per_address=3)
    async with server as host, contextlib.AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(client(host)) for _ in range(3)]
        async with client(host) as extra:
            code, reason = await closed_with(extra)
        assert code == 1013 and "from your address (at most 3)" in reason
        # Another address still gets in, and authenticating frees a slot for the first address.
        async with client(host, source="127.0.0.2") as other:
            await authenticated(other, settings, "bob")
        await authenticated(idle[0], settings, "alice")
        async with client(host) as next_one:
            await authenticated(next_one, settings, "carol")


async def test_unauthenticated_sockets_are_capped_in_all(settings: Settings, services: Services) -> None:
    async with limited_server(settings, services, ws_max_unauthenticated=2) as host:
        async with client(host, "127.0.0.3") as a, client(host, "127.0.0.4"):
            async with client(host, "127.0.0.5") as extra:
                code, reason = await closed_with(extra)
            assert code == 1013 and "too many unauthenticated connections (at most 2)" in reason
            await authenticated(a, settings, "alice")  # a slot frees when a socket authenticates ...
            async with client(host, "127.0.0.5") as again:
                await authenticated(again, settings, "bob")
        async with client(host, "127.0.0.6") as after:  # ... and when one closes
            await authenticated(after, settings, "carol")


@pytest.mark.parametrize("size", [20 * 1024, 16 * 1024 * 1024])
async def test_an_oversized_first_message_is_closed_with_1009(
    settings: Settings, services: Services, size: int
) -> None:
    """The bug: a 16 MiB first frame was read whole before authentication. Over the first-message bound
    (16 KiB) the app closes with 1009; over `ws_max_message_bytes` uvicorn does, before buffering it."""
    padding = "x" * (size - len('{"token": ""}'))
    async with limited_server(settings, services) as host, client(host) as ws:
        with contextlib.suppress(ConnectionClosed):  # the server may close while the frame is still sent
            await ws.send(orjson.dumps({"token": padding}).decode())
        code, _ = await closed_with(ws)
    assert code == 1009


async def test_a_first_message_over_the_bound_names_the_bound(settings: Settings, services: Services) -> None:
    async with limited_server(settings, services, ws_first_message_bytes=4096) as host:
        async with client(host) as ws:
            await ws.send(orjson.dumps({"token": token(settings, "alice"), "pad": "x" * 5000}).decode())
            code, reason = await closed_with(ws)
        assert code == 1009 and "at most 4096 bytes" in reason
        async with client(host) as ws:  # a credential under the bound still authenticates
            await authenticated(ws, settings, "alice")
