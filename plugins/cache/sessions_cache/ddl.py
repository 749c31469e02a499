"""The PostgreSQL trigger that tells every process of each committed change of the table.

Statement-level triggers with transition tables: one ``UPDATE`` or
``DELETE`` (a logout, ``psessions gc``'s batch of thousands, an
application's own SQL) sends its rows in notifications of at most
:data:`KEYS_PER_NOTIFICATION` each, as ``<key>:<new version>`` for a row
updated and ``<key>:-`` for a row deleted or given another key; a
``TRUNCATE`` sends ``'*'``.
An ``INSERT`` sends nothing: the cache never holds a row it did not read.
The statements are safe to run again (``CREATE OR REPLACE``, ``DROP
TRIGGER IF EXISTS``), and are what ``psessions <ini> ddl`` prints.
"""

from __future__ import annotations

import sqlalchemy as sa

from .listener import channel_name

__all__ = ["KEYS_PER_NOTIFICATION", "statements", "trigger_names"]

#: Keys per notification: 64-character keys and their versions (up to 20 digits), under
#: PostgreSQL's 8000-byte payload.
KEYS_PER_NOTIFICATION = 80


def _name(table: sa.Table, suffix: str) -> str:
    return f"{table.name}_{suffix}"[:63]


def trigger_names(table: sa.Table) -> tuple[str, str, str]:
    """The names of the three triggers (``UPDATE``, ``DELETE``, ``TRUNCATE``)."""
    return (
        _name(table, "notify_update"),
        _name(table, "notify_delete"),
        _name(table, "notify_truncate"),
    )


def statements(table: sa.Table, dialect: sa.Dialect, version: str = "version") -> list[str]:
    """The function and triggers, as SQL statements for ``dialect`` (PostgreSQL's);
    ``version`` is the name of the table's version column."""
    prepare = dialect.identifier_preparer
    qualified = prepare.format_table(table)
    schema = f"{prepare.quote_schema(table.schema)}." if table.schema else ""
    function = f"{schema}{prepare.quote(_name(table, 'notify'))}"
    key = prepare.quote(next(iter(table.primary_key.columns)).name)
    version = prepare.quote(version)
    channel = channel_name(table).replace("'", "''")
    update, delete, truncate = (prepare.quote(name) for name in trigger_names(table))
    per = KEYS_PER_NOTIFICATION
    body = f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tokens text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{channel}', '*');
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        FOR tokens IN
            SELECT string_agg({key} || ':-', ' ')
            FROM (SELECT {key}, (row_number() OVER () - 1) / {per} AS chunk
                  FROM old_rows) AS numbered
            GROUP BY chunk
        LOOP
            PERFORM pg_notify('{channel}', tokens);
        END LOOP;
    ELSE
        FOR tokens IN
            SELECT string_agg(token, ' ')
            FROM (SELECT token, (row_number() OVER () - 1) / {per} AS chunk
                  FROM (SELECT {key} || ':' || {version}::text AS token FROM new_rows
                        UNION ALL
                        SELECT old_rows.{key} || ':-' FROM old_rows
                        WHERE NOT EXISTS (SELECT 1 FROM new_rows
                                          WHERE new_rows.{key} = old_rows.{key})
                       ) AS tokens) AS numbered
            GROUP BY chunk
        LOOP
            PERFORM pg_notify('{channel}', tokens);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$"""
    return [
        body,
        f"DROP TRIGGER IF EXISTS {update} ON {qualified}",
        f"CREATE TRIGGER {update} AFTER UPDATE ON {qualified} "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"DROP TRIGGER IF EXISTS {delete} ON {qualified}",
        f"CREATE TRIGGER {delete} AFTER DELETE ON {qualified} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"DROP TRIGGER IF EXISTS {truncate} ON {qualified}",
        f"CREATE TRIGGER {truncate} AFTER TRUNCATE ON {qualified} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]
