"""API keys and quotas: who may call the service, for what, and how much.

`KeyStore` is plain Python over one SQLite file (the CLI `spectrashield keys` writes it; tested
without Ray). A key is a random bearer token shown once at creation; only its SHA-256 is stored
(tokens carry 256 bits of entropy, so an unsalted hash cannot be reversed by guessing) and only
the key's name is ever logged. `Gatekeeper` is one Serve replica that owns the store and the
quota counters, so every ingress replica on every node sees the same keys and the same budgets.

Quotas are per key and per minute, in requests and in request bytes (the declared
`Content-Length`), counted on a moving window by the `limits` library; over either, the answer
is 429 with `Retry-After`.

Without a key database the service runs open, and says so at start; it then answers only
clients on the loopback interface unless `allow_open` is set, and a Gatekeeper started behind a
proxy bound to a non-loopback address refuses to start (a bind to 0.0.0.0 without keys must be a
decision, not an accident).

The counters live in the storage named by `rate_limit_storage`, any `limits` storage URI:
`memory://` (the default) keeps them in the Gatekeeper replica, so they restart with it;
`redis://host:6379` (with the `redis` package installed) keeps them across restarts and shares
them with anything else that reads that store.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

logger = logging.getLogger("ray.serve")

SCOPES = ("analyze", "jobs", "feedback", "admin")  # admin: pins, placement details, deleting feedback, every other scope
TOKEN_PREFIX = "ss_"


class GatekeeperConfig(BaseModel):
    """user_config of Gatekeeper."""

    model_config = ConfigDict(extra="forbid")

    keys_db: str | None = Field(None, description="SQLite file written by `spectrashield keys`; unset: no keys, open")
    allow_open: bool = Field(
        False, description="without keys, serve non-loopback clients and start behind a non-loopback bind "
        "(otherwise 403, and a refusal to start)",
    )
    rate_limit_storage: str = Field(
        "memory://", description="`limits` storage URI for the quota counters (memory:// resets with the replica)",
    )


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key's name and scopes, or the anonymous caller of an open service."""

    name: str
    scopes: tuple[str, ...]

    def may(self, scope: str) -> bool:
        """`scope` "" asks only for a valid key."""
        return not scope or scope in self.scopes or "admin" in self.scopes


OPEN_CALLER = Caller("anonymous (open service)", SCOPES)


class Refusal(Exception):
    """An admission refused: HTTP status, detail, and Retry-After seconds for 429."""

    def __init__(self, status: int, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after_s = status, detail, retry_after_s

    def __reduce__(self):  # crosses from the Gatekeeper to the ingress as a value
        return Refusal, (self.status, self.detail, self.retry_after_s)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    name: str
    scopes: tuple[str, ...]
    requests_per_minute: int
    bytes_per_minute: int
    created: float
    revoked: float | None


class KeyStore:
    """Keys in one SQLite file (0600, in a directory it creates 0700)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = not self.path.exists()
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if new:
            self.path.chmod(0o600)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS keys (hash TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, scopes TEXT NOT NULL, "
            "rpm INTEGER NOT NULL, bpm INTEGER NOT NULL, created REAL NOT NULL, revoked REAL)"
        )

    def create(self, name: str, scopes: tuple[str, ...], requests_per_minute: int, bytes_per_minute: int) -> str:
        """A new key; returns its token, which is not stored and cannot be shown again."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
        if requests_per_minute < 1 or bytes_per_minute < 1:
            raise ValueError("quotas must be at least 1 per minute")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            self.db.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (token_hash(token), name, ",".join(scopes), requests_per_minute, bytes_per_minute, time.time()),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"a key named {name!r} exists; revoke it or pick another name") from None
        return token

    def revoke(self, name: str) -> bool:
        done = self.db.execute("UPDATE keys SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name))
        return done.rowcount == 1

    def _records(self, where: str, *args: object) -> list[KeyRecord]:
        rows = self.db.execute(f"SELECT name, scopes, rpm, bpm, created, revoked FROM keys {where}", args)
        return [KeyRecord(r[0], tuple(r[1].split(",")), *r[2:]) for r in rows]

    def list(self) -> list[KeyRecord]:
        return self._records("ORDER BY created")

    def lookup(self, token: str) -> KeyRecord | None:
        """The live key with this token, or None (unknown or revoked)."""
        found = self._records("WHERE hash = ? AND revoked IS NULL", token_hash(token))
        return found[0] if found else None

    def active(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM keys WHERE revoked IS NULL").fetchone()[0]


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class OpenBindRefused(RuntimeError):
    """The service would listen beyond loopback with no keys and no explicit `allow_open`."""


def check_bind(config: GatekeeperConfig, bind_host: str | None) -> None:
    """Refuse to run open behind a non-loopback bind unless `allow_open` says it is meant.

    `bind_host` None (not known) passes: the per-request loopback check still holds.
    """
    if config.keys_db or config.allow_open or bind_host is None or is_loopback(bind_host):
        return
    raise OpenBindRefused(
        f"refusing to start: HTTP is bound to {bind_host} and no API keys are configured. Create keys with "
        "`spectrashield keys create --db PATH` and set Gatekeeper's keys_db, bind to 127.0.0.1, or set "
        "Gatekeeper's allow_open: true to serve every client without keys on purpose."
    )


def serve_bind_host() -> str | None:
    """The host Serve's HTTP proxies bind, asked from the controller; None outside Serve or if unreadable."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:  # noqa: BLE001 - not under Serve (unit tests) or a Ray version without this call
        return None


class Admission:
    """Keys and quotas as one decision per request (the Gatekeeper's logic, without Ray)."""

    def __init__(self, config: GatekeeperConfig, announce: bool = True) -> None:
        self.config = config
        self.store = KeyStore(config.keys_db) if config.keys_db else None
        try:
            storage = storage_from_string(config.rate_limit_storage)
        except Exception as exc:  # an unknown scheme, or its client package missing
            raise ValueError(f"rate_limit_storage {config.rate_limit_storage!r}: {exc}") from None
        self.limiter = MovingWindowRateLimiter(storage)
        if self.store is None and announce:
            logger.warning(
                "NO API KEYS CONFIGURED: the service is open to %s. Create keys with `spectrashield keys create` "
                "and set Gatekeeper's keys_db.", "every client (allow_open)" if config.allow_open else "loopback clients only",
            )

    def admit(self, authorization: str | None, client_host: str | None, scope: str, nbytes: int) -> Caller:
        if self.store is None:
            if not self.config.allow_open and not is_loopback(client_host):
                raise Refusal(403, "this service has no API keys configured and answers loopback clients only")
            return OPEN_CALLER
        kind, _, token = (authorization or "").partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Refusal(401, "an API key is required: send `Authorization: Bearer <key>`")
        record = self.store.lookup(token.strip())
        if record is None:
            raise Refusal(401, "unknown or revoked API key")
        caller = Caller(record.name, record.scopes)
        if not caller.may(scope):
            raise Refusal(403, f"key {record.name!r} lacks the {scope!r} scope")
        for item, cost, what in (
            (RateLimitItemPerMinute(record.requests_per_minute), 1, "requests"),
            (RateLimitItemPerMinute(record.bytes_per_minute), max(nbytes, 0), "request bytes"),
        ):
            if cost > item.amount:
                raise Refusal(413, f"a request of {cost} {what} exceeds key {record.name!r}'s {item.amount} per minute")
            if cost and not self.limiter.hit(item, record.name, what, cost=cost):
                reset = self.limiter.get_window_stats(item, record.name, what).reset_time
                retry = max(1, math.ceil(reset - time.time()))
                raise Refusal(429, f"key {record.name!r} is over its quota of {item.amount} {what} per minute", retry)
        return caller


# user_config {} by default so that Serve always calls reconfigure, where the bind is checked.
@serve.deployment(name="Gatekeeper", num_replicas=1, ray_actor_options={"num_cpus": 0}, user_config={})
class GatekeeperDeployment:
    """The one owner of the keys and the quota counters (a single replica: counters are in its memory)."""

    def __init__(self) -> None:
        self.bind_host = serve_bind_host()
        self.admission = Admission(GatekeeperConfig(), announce=False)  # replaced by reconfigure, which Serve always calls

    def reconfigure(self, user_config: dict) -> None:
        config = GatekeeperConfig.model_validate(user_config or {})
        check_bind(config, self.bind_host)  # raising here fails the deployment: the service does not start
        self.admission = Admission(config)

    def admit(self, authorization: str | None, client_host: str | None, scope: str, nbytes: int) -> Caller | Refusal:
        """A `Caller`, or the `Refusal` as a value (a refusal is not a replica error worth a traceback)."""
        try:
            return self.admission.admit(authorization, client_host, scope, nbytes)
        except Refusal as refusal:
            return refusal


def main(argv: list[str] | None = None) -> int:
    """`spectrashield keys {create,revoke,list} --db PATH`: manage the Gatekeeper's key database."""
    import argparse

    parser = argparse.ArgumentParser(prog="spectrashield keys", description=main.__doc__)
    parser.add_argument("action", choices=("create", "revoke", "list"))
    parser.add_argument("--db", type=Path, required=True, help="the key database (Gatekeeper's keys_db)")
    parser.add_argument("--name", help="the key's name (create, revoke)")
    parser.add_argument("--scopes", default="analyze,jobs", help=f"comma-separated, of {', '.join(SCOPES)}")
    parser.add_argument("--requests-per-minute", type=int, default=60)
    parser.add_argument("--mib-per-minute", type=float, default=1024.0, help="request bytes per minute, in MiB")
    args = parser.parse_args(argv)
    store = KeyStore(args.db)
    if args.action == "list":
        for r in store.list():
            state = f"revoked {time.strftime('%Y-%m-%d %H:%M', time.gmtime(r.revoked))}" if r.revoked else "active"
            print(f"{r.name}\t{','.join(r.scopes)}\t{r.requests_per_minute} req/min\t"
                  f"{r.bytes_per_minute / 2**20:g} MiB/min\t{state}")
        return 0
    if not args.name:
        parser.error(f"{args.action} needs --name")
    if args.action == "revoke":
        if not store.revoke(args.name):
            print(f"no active key named {args.name!r}")
            return 1
        print(f"revoked {args.name}")
        return 0
    try:
        token = store.create(
            args.name, tuple(filter(None, (s.strip() for s in args.scopes.split(",")))),
            args.requests_per_minute, int(args.mib_per_minute * 2**20),
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"created {args.name}; the key (shown once, only its hash is stored):\n{token}")
    return 0
