"""The PostgreSQL trigger that tells every process of each committed change of the table.

Statement-level triggers with transition tables: one ``UPDATE`` or
``DELETE`` (a logout, ``psessions gc``'s batch of thousands, an
application's own SQL) sends its keys in notifications of at most
:data:`KEYS_PER_NOTIFICATION` keys each, and a ``TRUNCATE`` sends ``'*'``.
An ``INSERT`` sends nothing: the cache never holds a row it did not read.
The statements are safe to run again (``CREATE OR REPLACE``, ``DROP
TRIGGER IF EXISTS``), and are what ``psessions <ini> ddl`` prints.
"""

from __future__ import annotations

import sqlalchemy as sa

from .listener import channel_name

__all__ = ["KEYS_PER_NOTIFICATION", "statements", "trigger_names"]

#: Keys per notification: 64-character keys, well under PostgreSQL's 8000-byte payload.
KEYS_PER_NOTIFICATION = 100


def _name(table: sa.Table, suffix: str) -> str:
    return f"{table.name}_{suffix}"[:63]


def trigger_names(table: sa.Table) -> tuple[str, str, str]:
    """The names of the three triggers (``UPDATE``, ``DELETE``, ``TRUNCATE``)."""
    return (
        _name(table, "notify_update"),
        _name(table, "notify_delete"),
        _name(table, "notify_truncate"),
    )


def statements(table: sa.Table, dialect: sa.Dialect) -> list[str]:
    """The function and triggers, as SQL statements for ``dialect`` (PostgreSQL's)."""
    prepare = dialect.identifier_preparer
    qualified = prepare.format_table(table)
    schema = f"{prepare.quote_schema(table.schema)}." if table.schema else ""
    function = f"{schema}{prepare.quote(_name(table, 'notify'))}"
    key = prepare.quote(next(iter(table.primary_key.columns)).name)
    channel = channel_name(table).replace("'", "''")
    update, delete, truncate = (prepare.quote(name) for name in trigger_names(table))
    body = f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keys text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{channel}', '*');
        RETURN NULL;
    END IF;
    FOR keys IN
        SELECT string_agg({key}, ' ')
        FROM (SELECT {key}, (row_number() OVER () - 1) / {KEYS_PER_NOTIFICATION} AS chunk
              FROM changed_rows) AS numbered
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('{channel}', keys);
    END LOOP;
    RETURN NULL;
END
$$"""
    return [
        body,
        f"DROP TRIGGER IF EXISTS {update} ON {qualified}",
        f"CREATE TRIGGER {update} AFTER UPDATE ON {qualified} "
        f"REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"DROP TRIGGER IF EXISTS {delete} ON {qualified}",
        f"CREATE TRIGGER {delete} AFTER DELETE ON {qualified} "
        f"REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"DROP TRIGGER IF EXISTS {truncate} ON {qualified}",
        f"CREATE TRIGGER {truncate} AFTER TRUNCATE ON {qualified} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]
