"""Run secrets in memory (`ports.run_secrets.SecretKeeper`)."""

from __future__ import annotations

from echelon_platform.ports.run_secrets import RunSecrets


class MemorySecrets:
    def __init__(self) -> None:
        self.stored: dict[str, RunSecrets] = {}

    async def get(self, ref: str | None) -> RunSecrets:
        return self.stored.get(ref, RunSecrets()) if ref is not None else RunSecrets()

    async def put(self, ref: str, secrets: RunSecrets) -> None:
        self.stored[ref] = secrets

    async def delete(self, refs: list[str]) -> None:
        for ref in refs:
            self.stored.pop(ref, None)
