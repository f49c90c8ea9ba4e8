"""Smoke checks after a deployment (spec section 8.1), run concurrently with bounded retries.

Each check is a name and a function that returns a short detail or raises. A fresh deployment
may need a moment (hosts registering behind the load balancer, DNS, a cold database), so every
check is retried with exponential backoff (tenacity) up to a fixed number of attempts. The
result of each check carries its name, verdict, duration, attempts and error; the report has a
one-line summary.

The HTTP checks run from wherever the smoke command runs (the public URL); the database and
Redis checks need the VPC and run in the in-VPC function in AWS (`handlers.health_handler`),
or locally against local services.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_exponential

from scripts.dbops.migrations import migration_status
from scripts.lib.cli import SHORT_LINE, masker, shorten
from scripts.lib.db import DbTarget, connect

HTTP_TIMEOUT_SECONDS = 10
USER_AGENT = "psychology-api-smoke/1"
DEFAULT_STATIC_PATH = "/static/admin/css/base.css"
HEALTH_PATH = "/health/"
API_HEALTH_PATH = "/api/v1/health/"
# The summary is the verdict line after "FAIL: " and the stack output's one-line summary; each
# check's full error stays in its result (the human lines, --json, the function's answer).
SUMMARY_LIMIT = SHORT_LINE - len("FAIL: ")
SHORTEST_REASON = 24

Progress = Callable[[str], None]


class CheckFailed(Exception):
    """A check ran and the answer was wrong (as opposed to the check not being able to run)."""


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], str]


@dataclass
class CheckResult:
    name: str
    ok: bool
    duration_ms: int
    attempts: int
    error: Optional[str] = None
    detail: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": "pass" if self.ok else "fail", "ok": self.ok,
                "duration_ms": self.duration_ms, "attempts": self.attempts, "error": self.error, "detail": self.detail}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CheckResult:
        return cls(name=str(doc["name"]), ok=bool(doc["ok"]), duration_ms=int(doc.get("duration_ms") or 0),
                   attempts=int(doc.get("attempts") or 0), error=doc.get("error"), detail=doc.get("detail"))


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial_wait: float = 1.0
    max_wait: float = 20.0


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return masker(text.splitlines()[0])[:500]


def _announce_retry(check: Check, policy: RetryPolicy, progress: Progress) -> Callable[[RetryCallState], None]:
    """A line per failed attempt before the wait, so that a long run of retries is never silent."""
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = shorten(_one_line(error), 100) if error else "failed"
        wait = state.next_action.sleep if state.next_action else 0
        progress(f"{check.name}: attempt {state.attempt_number}/{policy.attempts} failed ({reason}); "
                 f"next attempt in {wait:.1f} s")
    return before_sleep


def run_check(check: Check, policy: RetryPolicy, progress: Optional[Progress] = None) -> CheckResult:
    started = time.monotonic()
    attempts = 0
    retrying = Retrying(stop=stop_after_attempt(max(1, policy.attempts)),
                        wait=wait_exponential(multiplier=policy.initial_wait, max=policy.max_wait), reraise=True,
                        before_sleep=_announce_retry(check, policy, progress) if progress else None)
    try:
        detail = ""
        for attempt in retrying:
            with attempt:
                attempts += 1
                detail = check.run()
        return CheckResult(check.name, True, int((time.monotonic() - started) * 1000), attempts, None, masker(detail))
    except Exception as err:  # noqa: BLE001 - every failure becomes a verdict with its message
        return CheckResult(check.name, False, int((time.monotonic() - started) * 1000), attempts, _one_line(err))


def run_checks(checks: Sequence[Check], policy: RetryPolicy = RetryPolicy(),
               progress: Optional[Progress] = None) -> list[CheckResult]:
    """All checks at once, one thread each; results in the order the checks were given.
    `progress` gets a line for every failed attempt that will be retried."""
    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="smoke") as pool:
        futures = [pool.submit(run_check, check, policy, progress) for check in checks]
        return [f.result() for f in futures]


def summary_line(results: Sequence[CheckResult]) -> str:
    """How many passed and, for each failed check, its name and the start of its error: at most
    SUMMARY_LIMIT characters, however many checks failed and however long their errors."""
    failed = [r for r in results if not r.ok]
    passed = len(results) - len(failed)
    if not failed:
        return shorten(f"{passed}/{len(results)} smoke checks passed: " + ", ".join(r.name for r in results), SUMMARY_LIMIT)
    prefix = f"{passed}/{len(results)} smoke checks passed; failed: "
    room = SUMMARY_LIMIT - len(prefix) - sum(len(r.name) + 5 for r in failed)
    if room // len(failed) < SHORTEST_REASON:  # too many to say why: the names, the reasons are above
        return shorten(prefix + ", ".join(r.name for r in failed) + " (see the checks' errors)", SUMMARY_LIMIT)
    reasons = "; ".join(f"{r.name} ({shorten(_reason(r.error), room // len(failed))})" for r in failed)
    return shorten(prefix + reasons, SUMMARY_LIMIT)


def _reason(error: Optional[str]) -> str:
    """An error without the request line that starts it: the check's name says which URL."""
    return re.sub(r"^GET \S+?:? ", "", masker(error or "failed"))


def report(results: Sequence[CheckResult], elapsed_ms: Optional[int] = None) -> dict[str, Any]:
    failed = [r for r in results if not r.ok]
    passed = len(results) - len(failed)
    doc: dict[str, Any] = {"ok": not failed and bool(results), "summary": summary_line(results),
                           "passed": passed, "failed": [r.name for r in failed],
                           "checks": [r.to_json() for r in results]}
    if elapsed_ms is not None:
        doc["duration_ms"] = elapsed_ms
    return doc


def compact_report(doc: dict[str, Any]) -> dict[str, Any]:
    """The short form exported as the stack output `smoke_test_report`."""
    return {"ok": doc["ok"], "summary": doc["summary"],
            "checks": {c["name"]: c["verdict"] for c in doc["checks"]}}


# --- HTTP checks -------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpTarget:
    base_url: str
    http_url: Optional[str] = None  # where plain HTTP answers; default: same host, port 80
    verify: Any = True  # True, False or a CA bundle path
    headers: Optional[dict[str, str]] = None

    @property
    def is_https(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def plain_http_url(self, path: str) -> str:
        if self.http_url:
            return self.http_url.rstrip("/") + path
        parts = urlsplit(self.base_url)
        return urlunsplit(("http", parts.hostname or "", path, "", ""))


def _innermost(err: BaseException) -> BaseException:
    """The cause at the bottom of requests' wrapping (ConnectionError > MaxRetryError > ...)."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        nested = getattr(err, "reason", None)
        if not isinstance(nested, BaseException):
            nested = next((a for a in err.args if isinstance(a, BaseException)), None)
        if nested is None:
            break
        err = nested
    return err


def _request_failure(url: str, err: BaseException) -> CheckFailed:
    """What went wrong, without urllib3's pool and connection descriptions around it."""
    reason = re.sub(r"^\w+\(host=[^)]*\): ", "", str(_innermost(err)).strip()) or type(err).__name__
    return CheckFailed(f"GET {url}: {reason}")


def _get(target: HttpTarget, url: str, *, allow_redirects: bool = True) -> Any:
    import requests

    headers = {"User-Agent": USER_AGENT, **(target.headers or {})}
    try:
        return requests.get(url, timeout=HTTP_TIMEOUT_SECONDS, allow_redirects=allow_redirects,
                            verify=target.verify, headers=headers)
    except requests.Timeout:
        raise CheckFailed(f"GET {url}: no answer within {HTTP_TIMEOUT_SECONDS} s") from None
    except requests.ConnectionError as err:  # SSLError included
        raise _request_failure(url, err) from None


def _expect_status(response: Any, status: int) -> None:
    if response.status_code != status:
        raise CheckFailed(f"{response.request.method} {response.url} answered {response.status_code}, expected {status}")


def http_checks(target: HttpTarget, *, static_path: str = DEFAULT_STATIC_PATH,
                expect_maintenance: bool = False) -> list[Check]:
    def health() -> str:
        response = _get(target, target.url(HEALTH_PATH))
        _expect_status(response, 200)
        return f"200 in {int(response.elapsed.total_seconds() * 1000)} ms"

    def api_health() -> str:
        response = _get(target, target.url(API_HEALTH_PATH))
        _expect_status(response, 200)
        try:
            body = response.json()
        except ValueError:
            raise CheckFailed(f"{API_HEALTH_PATH} did not answer JSON") from None
        status = body.get("status") if isinstance(body, dict) else None
        if status != "ok":
            raise CheckFailed(f"{API_HEALTH_PATH} status is {json.dumps(status)}, expected \"ok\"")
        return "status ok"

    def static_file() -> str:
        response = _get(target, target.url(static_path))
        _expect_status(response, 200)
        cache_control = response.headers.get("Cache-Control", "")
        if "public" not in cache_control.lower():
            raise CheckFailed(f"{static_path} Cache-Control is {cache_control!r}, expected it to contain 'public'")
        return f"Cache-Control: {cache_control}"

    def https_redirect() -> str:
        url = target.plain_http_url(HEALTH_PATH)
        response = _get(target, url, allow_redirects=False)
        _expect_status(response, 301)
        location = response.headers.get("Location", "")
        if not location.startswith("https://"):
            raise CheckFailed(f"{url} redirects to {location!r}, not to https://")
        return f"301 -> {location}"

    def hsts() -> str:
        response = _get(target, target.url(HEALTH_PATH), allow_redirects=False)
        value = response.headers.get("Strict-Transport-Security", "")
        max_age = _hsts_max_age(value)
        if not max_age:
            raise CheckFailed(f"Strict-Transport-Security is {value!r}, expected a positive max-age")
        return value

    def maintenance() -> str:
        response = _get(target, target.url(HEALTH_PATH))
        _expect_status(response, 503)
        return "503 maintenance page"

    checks = [Check("maintenance", maintenance)] if expect_maintenance else [
        Check("health", health), Check("api_health", api_health), Check("static", static_file)]
    if target.is_https:
        checks += [Check("https_redirect", https_redirect), Check("hsts", hsts)]
    return checks


def _hsts_max_age(value: str) -> int:
    for part in value.split(";"):
        key, _, number = part.strip().partition("=")
        if key.lower() == "max-age":
            try:
                return int(number.strip().strip('"'))
            except ValueError:
                return 0
    return 0


# --- database and Redis ------------------------------------------------------------------

def database_check(target: DbTarget, migrations_dir: Optional[Path] = None) -> Check:
    def run() -> str:
        with connect(target, application_name="psychology-api-smoke") as conn:
            row = conn.execute("SELECT 1").fetchone()
            if not row or row[0] != 1:
                raise CheckFailed("SELECT 1 did not answer 1")
            status = migration_status(conn, migrations_dir)
        if not status.ok:
            raise CheckFailed(status.message)
        return f"SELECT 1 ok; {status.message}"

    return Check("database", run)


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int = 6379
    password: Optional[str] = None
    username: Optional[str] = None
    tls: bool = False
    db: int = 0
    ca_bundle: Optional[str] = None

    def __post_init__(self) -> None:
        masker.add(self.password)

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"a Redis URL starts with redis:// or rediss://, not {parts.scheme}://")
        db_number = parts.path.strip("/") or "0"
        if not db_number.isdigit():
            raise ValueError(f"the database after the port is a number, not {db_number!r}")
        from urllib.parse import unquote

        return cls(host=parts.hostname or "localhost", port=parts.port or 6379,
                   password=unquote(parts.password) if parts.password else None,
                   username=unquote(parts.username) if parts.username else None, tls=parts.scheme == "rediss",
                   db=int(db_number))

    @classmethod
    def from_secret(cls, doc: dict[str, Any]) -> RedisTarget:
        """The Redis secret's format: {"host", "port", "auth_token", "tls": true}."""
        return cls(host=str(doc["host"]), port=int(doc.get("port") or 6379), password=doc.get("auth_token") or None,
                   tls=bool(doc.get("tls", True)))

    def describe(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def redis_client(target: RedisTarget) -> Any:
    """A redis-py client for the target: certificate and host name verified over TLS, no
    retries of its own (callers decide; redis-py would otherwise retry a refused AUTH, a
    ConnectionError, with its own backoff)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}
    if target.tls:
        kwargs.update(ssl=True, ssl_cert_reqs="required", ssl_ca_certs=target.ca_bundle)
    return redis.Redis(host=target.host, port=target.port, db=target.db, username=target.username,
                       password=target.password, socket_connect_timeout=5, socket_timeout=5, **kwargs)


def redis_check(target: RedisTarget) -> Check:
    def run() -> str:
        import redis

        client = redis_client(target)
        key = f"smoke:{uuid.uuid4().hex}"
        value = uuid.uuid4().hex
        try:
            client.set(key, value, ex=60)
            got = client.get(key)
            client.delete(key)
        except redis.AuthenticationError as err:
            raise CheckFailed(f"{target.describe()}: authentication failed ({_one_line(err)})") from None
        except redis.RedisError as err:
            raise CheckFailed(f"{target.describe()}: {_one_line(err)}") from None
        finally:
            client.close()
        if got is None or got.decode() != value:
            raise CheckFailed(f"{target.describe()}: GET returned {got!r} after SET")
        return f"SET/GET round trip on {target.describe()}"

    return Check("redis", run)
