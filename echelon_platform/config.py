"""The one typed Settings object, built in each entry point and passed down (never at import time)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from echelon_platform.domain.bus_access import BusLayout, writer_durable
from echelon_platform.domain.partitions import MAX_PARTITIONS, Partitioning
from echelon_platform.domain.stages import STAGE_NAMES
from echelon_platform.errors import ConfigError
from echelon_platform.redact import redact_url

DEV_JWT_SECRET = "development-only-secret-change-me-in-production"
# RFC 7518 §3.2: an HS256 key at least as long as the hash. Shorter ones only on a loopback (dev) API.
MIN_JWT_SECRET_BYTES = 32
DEFAULT_ORACLE_ALLOWLIST = ("pipeline_workers.oracles.sample:summarise",)
_URL_FIELDS = frozenset({"nats_url", "database_url", "redis_url"})


class JudgeEndpoint(BaseModel):
    """One judge of `ECHELON_JUDGES` with its own endpoint and key: the key is named (an environment variable
    holding it), never written into the list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    judge: str = Field(description="`anthropic:<model>` or `offline`")
    base_url: str | None = Field(default=None, description="default: ECHELON_ANTHROPIC_BASE_URL, else Anthropic's")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="the environment variable holding this judge's key (default: ECHELON_ANTHROPIC_API_KEY)",
    )


def judge_name(spec: str | JudgeEndpoint) -> str:
    return spec if isinstance(spec, str) else spec.judge


class Settings(BaseSettings):
    """Configuration read from `ECHELON_*` environment variables (plus the bare service URLs).

    Each field's docstring is its description in docs/configuration.md (scripts/gen_config_doc.py)."""

    model_config = SettingsConfigDict(env_prefix="ECHELON_", extra="ignore", frozen=True, use_attribute_docstrings=True)

    # Infrastructure: unset URLs mean "start embedded servers" (see `echelon stack up`).
    nats_url: str | None = Field(default=None, validation_alias=AliasChoices("ECHELON_NATS_URL", "NATS_URL"))
    """The NATS server(s) to use (a cluster: the servers, comma-separated); unset → embedded."""
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ECHELON_DATABASE_URL", "DATABASE_URL")
    )
    """The PostgreSQL server to use; unset → embedded."""
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("ECHELON_REDIS_URL", "REDIS_URL"))
    """The Redis server to use; unset → embedded."""
    data_dir: Path = Path(".echelon")
    """Where embedded servers keep their data (and generated keys, passwords and `api.json`)."""

    # Naming: tests give each run its own stream, subject root and key prefix.
    stream_name: str = "VERIFY"
    """The JetStream stream."""
    subject_root: str = "verify"
    """The subject root: every event is under `<root>.>`."""
    redis_prefix: str = "echelon:"
    """Prefix of every Redis key."""
    consumer_prefix: str = "echelon"
    """Prefix of the durable consumers' names (`<prefix>-ingest`, `<prefix>-coordinator[-K]`, …)."""
    duplicate_window_s: float = 120.0
    """JetStream's duplicate window (same `Nats-Msg-Id` dropped); the log dedups for good beyond it."""
    stream_replicas: int = Field(default=1, ge=1, le=5)
    """Stream replicas; `3` on a 3-node NATS cluster (`NATS_URL` lists the servers, comma-separated)."""
    stream_max_age_s: float = 30 * 86400
    """How long JetStream keeps events (30 days); Postgres keeps them for good."""
    nats_sync_always: bool = True
    """The embedded NATS fsyncs every JetStream write (see docs/durability.md)."""
    nats_auth: bool = True
    """The embedded NATS of `echelon stack up` requires a user per role, with generated passwords
    (see "Who may publish what on the bus" in docs/security.md and
    `echelon_platform/domain/roles.py`)."""
    nats_user: str | None = None
    """A single-role process's NATS user (e.g. `echelon worker certify` as `certify`)."""
    nats_password: SecretStr | None = None
    """A single-role process's NATS password."""
    nats_role_passwords: dict[str, SecretStr] = Field(default_factory=dict)
    """Role → password (JSON; user name = role) for a process running several roles (`stack up`), inline
    (e.g. from compose)."""
    nats_credentials_file: Path | None = None
    """The same as a JSON file (the embedded stack writes `<data_dir>/nats/credentials.json`)."""

    # API
    api_host: str = "127.0.0.1"
    """Where the API listens."""
    api_port: int = 8000
    """The API's port."""
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    """HS256 secret for Bearer tokens (default: a development value) — set it in production: with the
    development value, or one shorter than 32 bytes, the API refuses to listen on anything but loopback,
    and an empty one anywhere (`echelon api` / `stack up` exit 1 saying so). New secret:
    `openssl rand -hex 32`."""
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    """How tokens are HMAC-signed with the JWT secret."""
    api_base_url: str | None = None
    """Where clients (`echelon verify`) find the API; unset → `http://<API_HOST>:<API_PORT>`."""
    api_token: SecretStr | None = None
    """Bearer token `echelon verify` sends; unset → a token minted from the JWT secret."""

    log_level: str = "INFO"
    """structlog JSON lines on stderr (readable lines in a terminal)."""
    runs_per_minute: int = Field(default=10, ge=1)
    """`POST /runs` per user per minute (429 with `Retry-After`); counted before validation (which may
    resolve DNS), so a refused one (422) counts too."""
    ratings_per_minute: int = Field(default=60, ge=1)
    """Ratings per user per minute (429 with `Retry-After`)."""
    ws_queue_size: int = Field(default=1024, ge=16)
    """Frames buffered per WebSocket client."""
    ws_heartbeat_s: float = 15.0
    """An idle WebSocket gets a heartbeat this often."""
    ws_auth_timeout_s: float = 10.0
    """Time a WebSocket client has to authenticate and subscribe."""
    ws_close_timeout_s: float = 10.0
    """Time a stuck WebSocket client gets to take its close frame."""
    ready_max_lag: int = Field(default=10_000, ge=0)
    """`/readyz` answers 503 when the coordinator is more stream events behind than this."""
    ready_max_behind_s: float = Field(default=5.0, gt=0)
    """`/readyz` answers 503 when an event has waited longer than this to be logged (the writer is stalled:
    a lock, a dead writer)."""
    unknown_run_grace_s: float = Field(default=30.0, ge=0)
    """An event whose run's request is not in the log yet (a redelivery can overtake it after a fault) is
    handed back to the stream this long, measured from the event's own time, before it is parked."""
    ready_timeout_s: float = Field(default=1.0, gt=0, le=30)
    """`/readyz` answers within this time, whatever hangs (a check that does not answer in time fails)."""
    ready_stages: list[str] = Field(default_factory=lambda: list(STAGE_NAMES))
    """The stages whose durable consumers `/readyz` requires (each partition's writer's always)."""
    wallet_max_age_s: int = 300
    """A signed wallet message is fresh this long."""
    admin_wallets: list[str] = Field(default_factory=list)
    """Wallet addresses with the admin role."""
    siwe_domain: str | None = None
    """The domain (RFC 3986 authority, e.g. `verify.example.com` or `127.0.0.1:8000`) a Sign-In-with-Ethereum
    (EIP-4361) message must name; unset → from `ECHELON_API_BASE_URL` or host/port. Set it and
    `ECHELON_SIWE_URI` behind a proxy."""
    siwe_uri: str | None = None
    """The origin (scheme://authority) the message's `URI:` must have; unset → from `ECHELON_API_BASE_URL`
    or host/port (`http://127.0.0.1:8000`)."""
    siwe_chain_ids: list[int] = Field(default_factory=lambda: [1])
    """JSON list of accepted EIP-155 chain ids."""
    siwe_nonce_ttl_s: int = Field(default=300, ge=10)
    """A server-issued nonce must be used within this time."""
    siwe_nonces_per_minute: int = Field(default=60, ge=1)
    """Nonces issued per client address per minute (sessions too)."""
    siwe_max_outstanding_nonces: int = Field(default=10_000, ge=1)
    """Nonces issued and neither used nor expired, all clients together; beyond it `GET /auth/nonce` is a
    429 with `Retry-After`."""
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated addresses or networks (e.g. `10.0.0.5,192.168.0.0/16`) whose `X-Forwarded-For` /
    `X-Forwarded-Proto` the API (`echelon api`, `stack up`) believes. Empty (the default): none, not even
    loopback, so uvicorn's proxy handling is off and per-address limits see the TCP peer. Under your own
    `uvicorn --factory api.asgi:build_app`, pass `--no-proxy-headers` or `--forwarded-allow-ips` yourself
    (uvicorn's default believes loopback)."""
    ws_max_connections_per_user: int = Field(default=5, ge=1)
    """Open WebSocket connections per user per API process (one more: 4409)."""
    ws_max_unauthenticated: int = Field(default=128, ge=1)
    """WebSockets not yet authenticated per API process (one more is closed with 1013)."""
    ws_max_unauthenticated_per_address: int = Field(default=8, ge=1)
    """WebSockets not yet authenticated per client address (one more is closed with 1013)."""
    ws_first_message_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    """Size of a WebSocket's first (credentials) message; over: 1009."""
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=4096, le=16 * 1024 * 1024)
    """Size of any WebSocket message (uvicorn's `ws_max_size`, refused before it is buffered whole);
    over: 1009."""
    stats_per_minute: int = Field(default=60, ge=1)
    """`GET /stats` per client address per minute (429 with `Retry-After`)."""
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    """Larger request bodies get 413."""
    cors_origins: Annotated[list[str] | None, NoDecode] = None
    """Origins whose browser pages may call the API and open its WebSocket (comma-separated or JSON, `*`
    for any). Unset: `http://localhost:*` and `http://127.0.0.1:*` on a loopback API, none otherwise."""

    # Coordinator
    coordinator_batch: int = 256
    """Events per coordinator batch."""
    pg_statement_timeout_s: float = Field(default=30.0, gt=0)
    """Every Postgres statement of the roles fails (and is retried) after this."""
    fetch_timeout_s: float = 0.5
    """How long one pull from a durable consumer waits for messages (writer and stages)."""
    writer_partition: str = "verify"
    """The name of the writer lease (one writer per partition holds it; standbys take over when the holder
    stops renewing); `verify-<k>` per partition when there are several."""
    partitions: int = Field(default=1, ge=1, le=MAX_PARTITIONS)
    """Log partitions runs are spread over, each with its own fenced writer. Every process of a deployment
    must agree on it (it is part of the subjects); change it only with the stream drained."""
    writer_partitions: str = ""
    """The partitions this `echelon coordinator` stands for, e.g. `0,1` (empty: all of them; one leader
    per partition, any number of standbys)."""
    lease_ttl_s: float = Field(default=3.0, gt=0)
    """A leader that has not renewed its lease for this long is evicted by a standby."""

    # Pipeline
    secret_keys: list[SecretStr] = Field(default_factory=list)
    """JSON list of Fernet keys encrypting run secrets (GitHub tokens, oracle headers), independent of the
    JWT secret: the first encrypts, all decrypt. Unset (and no `ECHELON_SECRET_KEY`) → a key generated once
    into `<data dir>/secrets/fernet.key` (mode 0600; see `echelon_platform/adapters/secret_store.py`).
    Rotate by putting a new key first and dropping the old one after `ECHELON_SECRET_TTL_S` (24 h). Roles
    on several hosts must share it: set it there. New key:
    `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`."""
    secret_key: SecretStr | None = None
    """The one-key form of `ECHELON_SECRET_KEYS` (not both)."""
    secret_ttl_s: int = 24 * 3600
    """How long a run's stored secrets are kept (and so how long a retired Fernet key is still needed)."""
    oracle_allowlist: list[str] = Field(default_factory=lambda: list(DEFAULT_ORACLE_ALLOWLIST))
    """JSON list of `module:callable` Python oracles a request may name (default: the bundled sample)."""
    allow_private_oracles: bool = False
    """Allow HTTP oracles on private/loopback addresses."""
    local_repo_roots: list[Path] = Field(default_factory=list)
    """JSON list of directories local git repositories may be read from (empty: the data directory);
    symlinks and `..` are resolved once, the resolved path is checked and git reads that path (a link
    swapped after the check changes nothing), and the path must itself be a repository (git does not search
    its parents). Where git really reads from must be under the roots too: the ingest worker asks git for
    the git, common and object directories (`rev-parse --absolute-git-dir --git-common-dir --git-path
    objects`), resolves them, follows alternates and symlinks under the object directory, and fails the run
    naming what leads out (a `.git` file, a worktree of an outside repository, a symlink, alternates); the
    API already refuses (422) a `.git` file or symlink leading out. Later git calls are pinned to the
    checked directories, and no `GIT_*` variable of the worker's environment is passed to git."""
    oracle_timeout_s: float = 30.0
    """Not read by the roles: each request sets its own `oracle_timeout_s` (docs/api.md)."""
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ECHELON_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    """Enables the LLM judge (`ECHELON_JUDGE_MODEL`); unset → the offline scorer."""
    anthropic_base_url: str | None = None
    """Where `anthropic:<model>` judges send requests (unset: Anthropic's own API); an entry of
    `ECHELON_JUDGES` may name its own."""
    judge_model: str = "claude-sonnet-4-6"
    """The Anthropic model that judges when `ECHELON_JUDGES` is unset."""
    judge_concurrency: int = Field(default=128, ge=1)
    """The ceiling of concurrent judge calls per endpoint, shared by every process using it; the
    operating point adapts below it (AIMD on 429/529/overload, `retry-after` and rate-limit headers)."""
    judge_initial_concurrency: int | None = Field(default=None, ge=1)
    """Where the adaptive judge limit starts before it has learned anything (unset: the ceiling)."""
    oracle_concurrency: int = Field(default=64, ge=1)
    """The ceiling of concurrent calls per HTTP oracle endpoint (adaptive below it, like the judge's)."""
    oracle_initial_concurrency: int = Field(default=4, ge=1)
    """Where an HTTP oracle endpoint's adaptive limit starts: low, since an oracle's capacity is unknown; it
    grows while calls succeed and latency holds."""
    oracle_processes: int = Field(default=32, ge=1)
    """Child processes for sync Python oracles at once per invoke worker, at most 3/4 of them for one user
    (a call waits for one within its timeout)."""
    judges: list[str | JudgeEndpoint] | None = None
    """JSON list of judges in fallback order, e.g.
    `["anthropic:claude-sonnet-4-6", "anthropic:claude-haiku-4-5", "offline"]`: each has a circuit breaker
    and the next one answers when it fails. Unset: Anthropic with a key, else offline. An entry may be an
    object with its own endpoint and the variable holding its key (never the key itself):
    `{"judge": "anthropic:claude-haiku-4-5", "base_url": "https://…", "api_key_env": "FALLBACK_ANTHROPIC_KEY"}`."""
    judge_breaker_failures: int = Field(default=3, ge=1)
    """Consecutive failures that open a judge's circuit breaker."""
    judge_breaker_cooldown_s: float = Field(default=30.0, ge=0)
    """Cool-down of an open breaker before one trial call."""
    judge_mixing: Literal["flag", "refuse"] = "flag"
    """Replays of one certificate scored by different judges: `flag` (warning + `mixed_judges`) or `refuse`
    (the run fails)."""
    methodology_version: str = "v1"
    """The prompt set, rubric and parsing conventions judges use (`pipeline_workers/prompts/<version>`)."""
    github_api_url: str = "https://api.github.com"
    """GitHub REST endpoint (GitHub calls never go through a proxy: point this at a reachable one)."""
    github_max_pages: int = Field(default=100, ge=1)
    """Pages of GitHub's closed-PR list one ingest reads at most; a run left short says so (`partial`)."""
    stage_concurrency: int = Field(default=128, ge=1)
    """Messages in flight per stage worker (the judge and oracles limit themselves below this)."""
    stage_per_user_concurrency: int | None = Field(default=None, ge=1)
    """Slots are shared fairly: each active user gets an equal share (round-robin over users, then over that
    user's runs), and no user holds more than this many (unset: 3/4 of the slots), so a user whose oracles
    hang leaves the rest to others."""
    stage_per_run_concurrency: int | None = Field(default=None, ge=1)
    """Of a user's share, at most this many for one run (unset: the user's share)."""
    run_timeout_s: float = 900.0
    """The watchdog fails a run with no progress for this long."""
    watchdog_interval_s: float = 5.0
    """How often the watchdog looks for stalled runs."""
    ack_wait_s: float = 60.0
    """JetStream redelivers a message not acked within this time (durable consumers' `ack_wait`)."""
    max_deliver: int = 10
    """Deliveries of one message a stage tries (retries back off) before it gives up and publishes the failure."""

    # Certificate signing (Ed25519).
    signing_key_file: Path | None = None
    """Ed25519 private key (PEM PKCS#8) the certifier signs with; unset → generated once into
    `<data dir>/signing/ed25519.pem`."""
    signing_retired_key_files: list[Path] = Field(default_factory=list)
    """JSON list of earlier keys (PEM, private or public) still published so old certificates verify; the
    first private one endorses the active key."""
    signing_root_key_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """The root of the signing key chain the API trusts (a key id); unset → pinned once in
    `<data dir>/signing/root-key-id`."""
    selection_policy: Literal["pr-merges", "first-parent-merges"] = "pr-merges"
    """Ground-truth selection for local repositories (`pr-merges`, `first-parent-merges`; see
    docs/certificates.md)."""

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for entry in value:
                try:  # uvicorn would silently treat a typo as a literal host name that never matches
                    ipaddress.ip_network(str(entry), strict=False)
                except ValueError as exc:
                    raise ValueError(f"ECHELON_TRUSTED_PROXIES: {entry!r} is not an IP address or network") from exc
        return value

    @property
    def partitioning(self) -> Partitioning:
        return Partitioning(self.partitions)

    @property
    def writer_partition_ids(self) -> tuple[int, ...]:
        """The partitions this process's coordinator stands for (ConfigError naming a bad one)."""
        return self.partitioning.parse(self.writer_partitions)

    def writer_durable(self, partition: int) -> str:
        """The durable consumer a partition's writer consumes through."""
        return writer_durable(self.consumer_prefix, self.partitioning, partition)

    def bus_layout(self) -> BusLayout:
        """The stream and consumer names NATS permissions are written for (bus_access.py)."""
        return BusLayout(self.stream_name, self.subject_root, self.consumer_prefix, self.partitions)

    def lease_name(self, partition: int) -> str:
        """The writer lease of one partition (`writer_partition` itself with a single partition)."""
        return f"{self.writer_partition}{self.partitioning.suffix(partition)}"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [o.strip() for o in text.split(",") if o.strip()]
        return value

    @property
    def uses_dev_secret(self) -> bool:
        return self.jwt_secret.get_secret_value() == DEV_JWT_SECRET

    def api_is_loopback(self) -> bool:
        """Whether the API listens only on this machine (127.0.0.0/8, ::1 or `localhost`)."""
        host = self.api_host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name (or "" for every interface): reachable from elsewhere
            return False

    def check_api_exposure(self) -> None:
        """Refuse (ConfigError) a JWT secret no token can be checked with (empty), and beyond loopback the
        published development secret (anyone could mint an admin token for it) or one shorter than
        MIN_JWT_SECRET_BYTES (guessable offline from any token)."""
        where = f"refusing to serve the API on {self.api_host or '*'}"
        try:
            size = len(self.jwt_secret.get_secret_value().encode("utf-8"))
        except UnicodeEncodeError:  # bytes that are not UTF-8 in the environment: no HMAC key can be made
            raise ConfigError(f"{where}: ECHELON_JWT_SECRET is not valid UTF-8 text") from None
        if size == 0:
            raise ConfigError(
                f"{where}: ECHELON_JWT_SECRET is empty and no token could be verified; set it to at least "
                f"{MIN_JWT_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`), or unset it on loopback"
            )
        if self.api_is_loopback():
            return
        if self.uses_dev_secret:
            raise ConfigError(
                f"{where}: ECHELON_JWT_SECRET is unset and the development secret lets anyone mint tokens; "
                "set ECHELON_JWT_SECRET (or ECHELON_API_HOST=127.0.0.1)"
            )
        if size < MIN_JWT_SECRET_BYTES:
            raise ConfigError(
                f"{where}: ECHELON_JWT_SECRET is {size} bytes; beyond loopback it must be at least "
                f"{MIN_JWT_SECRET_BYTES} (e.g. `openssl rand -hex 32`), or set ECHELON_API_HOST=127.0.0.1"
            )

    def api_url(self) -> str:
        """The API's base URL for a client on this machine: ECHELON_API_BASE_URL, else where the API listens."""
        if self.api_base_url:
            return self.api_base_url.rstrip("/")
        host = self.api_host
        if host in ("", "0.0.0.0"):  # listening everywhere: reach it on loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.api_port}"

    def siwe_expected_uri(self) -> str:
        return (self.siwe_uri or self.api_url()).rstrip("/")

    def siwe_expected_domain(self) -> str:
        if self.siwe_domain:
            return self.siwe_domain
        return self.siwe_expected_uri().split("://", 1)[-1].split("/", 1)[0]

    def allowed_repo_roots(self) -> list[Path]:
        return self.local_repo_roots or [self.data_dir]

    def __repr_args__(self) -> Any:
        # URLs may carry passwords (the embedded Postgres and Redis): a repr shows them masked.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in _URL_FIELDS and isinstance(value, str) else value

    def infra_configured(self) -> bool:
        return bool(self.nats_url and self.database_url and self.redis_url)
