"""Garbage collection at scale: delete the expired half of a large session table.

    python benchmarks/bench_gc.py --rows 1000000            # PostgreSQL from the environment
    python benchmarks/bench_gc.py --rows 100000 --url sqlite:////tmp/gc.sqlite

The table is filled inside the database (generate_series on PostgreSQL, a
recursive CTE elsewhere), so the Python process holds no rows of its own; the
model uses the idle-timeout plugin, half of the rows are past their expiry.
Prints the time, the rate, the process's peak memory before and after the
collection, and the longest single SQL statement. Run it with two sizes to see
that memory does not grow with the number of rows.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any

import sqlalchemy as sa

from sessions_kernel import maintenance, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, Clock, make_model

NOW = 1_750_000_000


def fill(engine: sa.Engine, table: str, rows: int, data_bytes: int = 2) -> None:
    """Insert ``rows`` sessions, every other one expired at NOW, without Python-side rows.

    ``data`` is ``{}`` (2 bytes), or with ``data_bytes`` > 2 a JSON object of that size
    (``{"k":"xxx..."}``) that differs per row, as real session data does.
    """
    expire = f"CASE WHEN i % 2 = 0 THEN {NOW - 1} ELSE {NOW + 3600} END"
    insert = f"INSERT INTO {table} (id, created, updated, data, idle_expire, version)"
    numbers = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)"
    dialect = engine.dialect.name
    pad = max(data_bytes - 16, 0)  # {"k":"<8 hex>...."}
    if dialect == "postgresql":
        data = (
            "'\\x7b7d'::bytea"
            if data_bytes <= 2
            else f"convert_to('{{\"k\":\"' || lpad(to_hex(i), 8, '0') || repeat('x', {pad}) "
            "|| '\"}', 'UTF8')"
        )
        sql = (
            f"{insert} SELECT lpad(to_hex(i), 64, '0'), 0, 0, {data}, {expire}, 1 "
            "FROM generate_series(1, :rows) AS i"
        )
    elif dialect in {"mysql", "mariadb"}:
        data = (
            "'{}'"
            if data_bytes <= 2
            else f"CONCAT('{{\"k\":\"', lpad(hex(i), 8, '0'), repeat('x', {pad}), '\"}}')"
        )
        sql = f"{insert} {numbers} SELECT lpad(hex(i), 64, '0'), 0, 0, {data}, {expire}, 1 FROM n"
    else:
        sql = f"{numbers} {insert} SELECT printf('%064x', i), 0, 0, X'7b7d', {expire}, 1 FROM n"
    with engine.begin() as conn:
        if dialect in {"mysql", "mariadb"}:  # MariaDB stops a recursive CTE at 1000 rows
            conn.exec_driver_sql(f"SET SESSION max_recursive_iterations = {rows + 1}")
        conn.execute(sa.text(sql), {"rows": rows})
        if dialect == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {table}")


def table_bytes(engine: sa.Engine, table: str) -> int | None:
    """The table's size on disk with its indexes (PostgreSQL, MariaDB), else ``None``."""
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if dialect == "postgresql":
            return conn.scalar(sa.text(f"SELECT pg_total_relation_size('{table}')"))
        if dialect in {"mysql", "mariadb"}:
            conn.exec_driver_sql(f"ANALYZE TABLE {table}")
            return conn.scalar(
                sa.text(
                    "SELECT data_length + index_length FROM information_schema.TABLES "
                    "WHERE table_schema = DATABASE() AND table_name = :t"
                ),
                {"t": table},
            )
    return None


class StatementTimer:
    """The longest single statement an engine executes."""

    def __init__(self, engine: sa.Engine) -> None:
        self.longest = 0.0
        self.statement = ""
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        elapsed = time.perf_counter() - conn.info.pop("bench_started")
        self.count += 1
        if elapsed > self.longest:
            self.longest, self.statement = elapsed, " ".join(statement.split())[:70]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--data-bytes",
        type=int,
        default=2,
        help="size of each row's serialized data (default 2: {}); PostgreSQL and MariaDB",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("SESSIONS_TEST_POSTGRESQL_URL"),
        help="SQLAlchemy URL (default: $SESSIONS_TEST_POSTGRESQL_URL)",
    )
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url or set SESSIONS_TEST_POSTGRESQL_URL")
    try:
        from sessions_idle_timeout import IdleMixin
    except ImportError:
        print("the idle-timeout plugin is not installed: run make install", file=sys.stderr)
        return 2

    model = make_model(IdleMixin, tablename="bench_gc_sessions")
    maintenance.add_indexes(model)
    engine = sa.create_engine(args.url)
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    try:
        started = time.perf_counter()
        fill(engine, model.__tablename__, args.rows, args.data_bytes)
        print(f"filled {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        size = table_bytes(engine, model.__tablename__)
        if size:
            print(
                f"table size       {size / 2**20:,.1f} MiB with indexes, {size / args.rows:,.0f} "
                f"bytes per row ({2**30 * args.rows // size:,} rows per GiB), "
                f"data {args.data_bytes} bytes"
            )
        factory = session_factory(
            model_class=model, secret_key=TEST_SECRET_KEY, clock=Clock(NOW), idle_timeout=3600
        )
        timer = StatementTimer(engine)
        before = peak_mib()
        result = maintenance.collect_garbage(factory, engine, batch_size=args.batch_size)
        after = peak_mib()
        with engine.connect() as conn:
            left = conn.scalar(sa.select(sa.func.count()).select_from(model))
        print(f"database         {engine.dialect.name}")
        print(f"rows             {args.rows:,} ({args.rows // 2:,} expired)")
        print(
            f"deleted          {result.deleted:,} in {result.batches} batches of {args.batch_size}"
        )
        print(f"left             {left:,}")
        rate = result.deleted / result.seconds
        print(f"time             {result.seconds:.2f} s ({rate:,.0f} rows/s)")
        print(f"peak memory      {before:.1f} MiB before, {after:.1f} MiB after")
        print(f"statements       {timer.count}")
        print(f"longest          {timer.longest * 1000:.1f} ms ({timer.statement})")
    finally:
        model.metadata.drop_all(engine)
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
