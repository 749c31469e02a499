"""The built-in sources: one adapter per old store (see :mod:`sessions_migrate.source`).

* :mod:`.predecessor`: pyramid_sqlalchemy_sessions 0.1 (its table, its AES-GCM cookie);
* :mod:`.beaker`: pyramid_beaker with Beaker's ``ext:database`` store (its table, its
  signed id cookie);
* :mod:`.redis`: pyramid_session_redis (its signed cookie, its Redis key).
"""
