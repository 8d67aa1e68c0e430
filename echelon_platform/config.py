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
    """Configuration read from `ECHELON_*` environment variables (plus the bare service URLs)."""

    model_config = SettingsConfigDict(env_prefix="ECHELON_", extra="ignore", frozen=True)

    # Infrastructure: unset URLs mean "start embedded servers" (see `echelon stack up`).
    nats_url: str | None = Field(default=None, validation_alias=AliasChoices("ECHELON_NATS_URL", "NATS_URL"))
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ECHELON_DATABASE_URL", "DATABASE_URL")
    )
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("ECHELON_REDIS_URL", "REDIS_URL"))
    data_dir: Path = Path(".echelon")

    # Naming: tests give each run its own stream, subject root and key prefix.
    stream_name: str = "VERIFY"
    subject_root: str = "verify"
    redis_prefix: str = "echelon:"
    consumer_prefix: str = "echelon"
    duplicate_window_s: float = 120.0
    stream_replicas: int = Field(default=1, ge=1, le=5)  # 3 on a 3-node NATS cluster
    stream_max_age_s: float = 30 * 86400  # how long JetStream keeps events (Postgres keeps them for good)
    nats_sync_always: bool = True
    # Bus authentication (see echelon_platform/domain/roles.py). The embedded NATS of `echelon stack up`
    # gets one user per role with generated passwords unless this is off.
    nats_auth: bool = True
    # A single-role process: its NATS user and password.
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    # A process running several roles (`stack up`): role -> password, user name = role name. Given inline
    # (JSON, e.g. from compose) or as a JSON file (the embedded stack writes `<data_dir>/nats/credentials.json`).
    nats_role_passwords: dict[str, SecretStr] = Field(default_factory=dict)
    nats_credentials_file: Path | None = None

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"  # tokens are HMAC-signed with jwt_secret
    api_base_url: str | None = None  # where clients find the API; unset → api_url() from api_host/api_port
    api_token: SecretStr | None = None

    log_level: str = "INFO"
    runs_per_minute: int = Field(default=10, ge=1)  # POST /runs per user per minute
    ratings_per_minute: int = Field(default=60, ge=1)
    ws_queue_size: int = Field(default=1024, ge=16)  # frames buffered per WebSocket client
    ws_heartbeat_s: float = 15.0
    ws_auth_timeout_s: float = 10.0
    ws_close_timeout_s: float = 10.0
    # /readyz answers 503 when the coordinator is this many stream events behind.
    ready_max_lag: int = Field(default=10_000, ge=0)
    # ... or when an event has waited this long to be logged (the writer is stalled: a lock, a dead writer).
    ready_max_behind_s: float = Field(default=5.0, gt=0)
    # An event whose run's request is not in the log yet (a redelivery can overtake it after a fault) is
    # handed back to the stream this long, measured from the event's own time, before it is parked.
    unknown_run_grace_s: float = Field(default=30.0, ge=0)
    # /readyz answers within this time, whatever hangs (a probe that does not answer in time fails).
    ready_timeout_s: float = Field(default=1.0, gt=0, le=30)
    # The stages whose durable consumers /readyz requires (besides every partition's writer).
    ready_stages: list[str] = Field(default_factory=lambda: list(STAGE_NAMES))
    wallet_max_age_s: int = 300  # a signed wallet message is fresh this long
    admin_wallets: list[str] = Field(default_factory=list)
    # Sign-In with Ethereum (EIP-4361): the message must name this service. Unset → derived from api_url().
    siwe_domain: str | None = None  # RFC 3986 authority, e.g. "verify.example.com" or "127.0.0.1:8000"
    siwe_uri: str | None = None  # the message's `URI:` must have this origin (scheme://authority)
    siwe_chain_ids: list[int] = Field(default_factory=lambda: [1])
    siwe_nonce_ttl_s: int = Field(default=300, ge=10)  # a server-issued nonce must be used within this time
    siwe_nonces_per_minute: int = Field(default=60, ge=1)  # GET /auth/nonce per client address
    # Nonces issued and neither used nor expired, all clients together: GET /auth/nonce answers 429 beyond it.
    siwe_max_outstanding_nonces: int = Field(default=10_000, ge=1)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto the API believes (addresses or networks, comma
    # separated). Empty (the default): none, not even loopback, so per-address limits see the real peer.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ws_max_connections_per_user: int = Field(default=5, ge=1)  # per API process
    # Sockets not yet authenticated, per API process: at most this many in all and per client address; one
    # more is closed with 1013. Their first message (the credentials) is at most ws_first_message_bytes
    # (else 1009); uvicorn refuses any message over ws_max_message_bytes (1009) before it is buffered whole.
    ws_max_unauthenticated: int = Field(default=128, ge=1)
    ws_max_unauthenticated_per_address: int = Field(default=8, ge=1)
    ws_first_message_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=4096, le=16 * 1024 * 1024)
    stats_per_minute: int = Field(default=60, ge=1)  # GET /stats per client address per minute
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)  # larger request bodies get 413
    # Origins whose browser pages may call the API (and open its WebSocket): comma-separated or a JSON list,
    # `*` for any. Unset: http://localhost:* and http://127.0.0.1:* on a loopback API, none otherwise.
    cors_origins: Annotated[list[str] | None, NoDecode] = None

    # Coordinator
    coordinator_batch: int = 256
    pg_statement_timeout_s: float = Field(default=30.0, gt=0)  # every Postgres statement of the roles
    fetch_timeout_s: float = 0.5
    # One writer per partition (a Postgres lease); standbys take over when the holder stops renewing.
    writer_partition: str = "verify"
    # Runs are spread over this many log partitions, each with its own fenced writer. Every process of a
    # deployment must agree on it (it is part of the subjects); change it only with the stream drained.
    partitions: int = Field(default=1, ge=1, le=MAX_PARTITIONS)
    # The partitions this coordinator process stands for, e.g. "0,1" (empty: all of them).
    writer_partitions: str = ""
    lease_ttl_s: float = Field(default=3.0, gt=0)

    # Pipeline
    # Fernet keys encrypting run secrets, never derived from the JWT secret. ECHELON_SECRET_KEYS (JSON list):
    # the first encrypts, all decrypt (rotation). ECHELON_SECRET_KEY: one key. Neither: a key generated
    # once into data_dir/secrets/fernet.key (see echelon_platform/adapters/secret_store.py).
    secret_keys: list[SecretStr] = Field(default_factory=list)
    secret_key: SecretStr | None = None
    secret_ttl_s: int = 24 * 3600
    oracle_allowlist: list[str] = Field(default_factory=lambda: list(DEFAULT_ORACLE_ALLOWLIST))
    allow_private_oracles: bool = False
    # Directories local git repositories may be read from; empty means only under data_dir.
    local_repo_roots: list[Path] = Field(default_factory=list)
    oracle_timeout_s: float = 30.0
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ECHELON_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = None
    judge_model: str = "claude-sonnet-4-6"
    judge_concurrency: int = 4
    # Ordered judges, e.g. ["anthropic:claude-sonnet-4-6", "anthropic:claude-haiku-4-5", "offline"]; each has a
    # circuit breaker and the next one answers when it fails. Unset: Anthropic with a key, else offline.
    # An entry may also be an object naming its own endpoint and key variable (see JudgeEndpoint), e.g.
    # {"judge": "anthropic:claude-haiku-4-5", "base_url": "https://…", "api_key_env": "FALLBACK_ANTHROPIC_KEY"}.
    judges: list[str | JudgeEndpoint] | None = None
    judge_breaker_failures: int = Field(default=3, ge=1)  # consecutive failures that open a judge's breaker
    judge_breaker_cooldown_s: float = Field(default=30.0, ge=0)  # then one trial call after this long
    # Replays of one certificate scored by different judges: flag (warning + mixed_judges) or refuse.
    judge_mixing: Literal["flag", "refuse"] = "flag"
    # The prompt set, rubric and parsing conventions judges use (pipeline_workers/prompts/<version>).
    methodology_version: str = "v1"
    github_api_url: str = "https://api.github.com"
    # Pages of GitHub's closed-PR list one ingest reads at most; a run short of its limit says so.
    github_max_pages: int = Field(default=100, ge=1)
    stage_concurrency: int = 8
    # At most this many messages of one run in flight per stage worker, so one run cannot take every slot.
    stage_per_run_concurrency: int = 4
    run_timeout_s: float = 900.0
    watchdog_interval_s: float = 5.0
    ack_wait_s: float = 60.0
    max_deliver: int = 10

    # Certificate signing (Ed25519). Unset key file: one is generated once under data_dir/signing/.
    signing_key_file: Path | None = None
    # Keys that signed earlier certificates (PEM, private or public): still published, so those verify.
    signing_retired_key_files: list[Path] = Field(default_factory=list)
    # The root of the key chain verifiers trust (a key id); unset: pinned once in data_dir/signing/root-key-id.
    signing_root_key_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # Ground-truth selection policy for local repositories (see README "Ground truth").
    selection_policy: Literal["pr-merges", "first-parent-merges"] = "pr-merges"

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
