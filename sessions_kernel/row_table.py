"""The session table as the kernel's statements see it: the base of :class:`~.storage.RowStorage`.

:class:`RowTable` resolves, once per factory, what every statement on a
session's row needs of the model's mapper (the table, its key and version
columns, the attribute key of each column, the plugins' merge rules) and
holds the factory's storage settings (the clock, ``lock_contended_for``,
``max_data_size``, the runtime settings' columns). The statements themselves
are in its subclasses, one module each: :mod:`.reads` (the load, locked when
contended), :mod:`.writes` (the versioned UPDATE and the merge with a
concurrent write) and :mod:`.storage` (new rows, logouts and held ids).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from zope.sqlalchemy import mark_changed

from .errors import ConfigurationError
from .merge import MergeRule

if TYPE_CHECKING:
    from .reads import _DirectLoad

__all__ = ["LINEAGE_CHARS", "RowTable"]

#: Hex digits of the row key that stay when the id is regenerated (96 bits): the lineage.
LINEAGE_CHARS = 24


class RowTable:
    """What the statements on one factory's session rows need, resolved once.

    Raises :class:`~sessions_kernel.ConfigurationError` for a model whose
    mapper has no version column.
    """

    def __init__(
        self,
        model: type,
        data_serializer: Any,
        merge_rules: Mapping[str, tuple[tuple[str, ...], MergeRule]],
        *,
        clock: Callable[[], float],
        lock_contended_for: int = 0,
        max_data_size: int | None = None,
        setting_columns: Iterable[str] = (),
    ) -> None:
        mapper: Any = sa.inspect(model)
        if mapper.version_id_col is None:
            raise ConfigurationError(
                f"{model.__name__} declares __mapper_args__ without the version column "
                "the kernel uses to notice concurrent writes; include "
                '"version_id_col": cls.__table__.c.version in it'
            )
        self.model = model
        self.data_serializer = data_serializer
        self.table = mapper.local_table
        self.pk_column = mapper.primary_key[0]
        self.version_column = mapper.version_id_col
        #: attribute key -> column
        self.columns = {prop.key: prop.columns[0] for prop in mapper.column_attrs}
        self.pk_key = mapper.get_property_by_column(self.pk_column).key
        self.version_key = mapper.get_property_by_column(self.version_column).key
        self.column_keys = tuple(k for k in self.columns if k != self.version_key)
        # what a new row's own INSERT needs: attribute key -> the column's key in the table
        self.insert_keys = {key: column.key for key, column in self.columns.items()}
        self.version_column_key = self.version_column.key
        #: columns a new row's INSERT leaves NULL when not given (no default of any kind)
        self.null_on_insert = tuple(
            key
            for key, column in self.columns.items()
            if column.default is None and column.server_default is None and key != self.pk_key
        )
        #: column -> (its group, the rule): how plugins' columns merge (``session_merge_rules``)
        self.merge_rules = merge_rules
        #: columns whose write may give way to a concurrent one (``merge.droppable``)
        self.droppable_columns = frozenset(
            name for name, (_, rule) in merge_rules.items() if getattr(rule, "droppable", 0)
        )
        self._insert = self.table.insert()
        # the UPDATE statements, per tuple of changed columns (versioned_update)
        self._updates: dict[tuple[str, ...], Any] = {}
        self.clock = clock
        #: seconds a row that lost a conflict loads locked (see mark_contended)
        self.lock_contended_for = lock_contended_for
        #: bytes the serialized data and flash may take together (``None``: no limit)
        self.max_data_size = max_data_size
        #: columns of runtime-configurable settings, valid only together (see merge)
        self.setting_columns = frozenset(setting_columns)
        # row id -> until when its requests load it locked (see mark_contended)
        self._contended: dict[str, float] = {}
        self._contended_lock = threading.Lock()
        # how _get loads a row without the ORM's query (decided at the first load)
        self._direct: _DirectLoad | Literal[False] | None = None

    def execute(self, dbsession: Any, statement: Any) -> Any:
        """Run one of the kernel's own UPDATE or DELETE statements in the request's transaction."""
        with dbsession.no_autoflush:  # the ORM must not write the row itself first
            result = dbsession.execute(statement)
        # zope.sqlalchemy commits only sessions it saw change; SQL it did not run
        # through the ORM's unit of work has to say so, or it is rolled back.
        mark_changed(dbsession)
        return result
