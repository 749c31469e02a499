"""Fixtures sessions-migrate's test modules share."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

#: Redis for pyramid_session_redis's sessions (database 15); unset: those tests skip
REDIS_URL = os.environ.get("SESSIONS_TEST_REDIS_URL")


@pytest.fixture
def r() -> Iterator[object]:
    """A client of the test Redis (``SESSIONS_TEST_REDIS_URL``); skips when unset or down."""
    import redis

    required = os.environ.get("SESSIONS_TEST_REQUIRE_SERVERS", "") not in ("", "0")
    missing = pytest.fail if required else pytest.skip  # CI requires every server
    if not REDIS_URL:
        missing("SESSIONS_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/15)")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing(f"no Redis at SESSIONS_TEST_REDIS_URL ({REDIS_URL}): {exc}")
    yield client
    client.close()


@pytest.fixture
def prefix(r: object) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    mine = f"test-migrate-{secrets.token_hex(6)}:"
    yield mine
    keys = list(r.scan_iter(match=mine + "*", count=1000))  # type: ignore[attr-defined]
    if keys:
        r.delete(*keys)  # type: ignore[attr-defined]
