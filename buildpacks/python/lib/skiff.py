"""Skiff's add-ons from Python: the app's PostgreSQL database and key-value store.

The host opens what the app's own config names (DATABASE_URL, KV_URL) through Skiff's
interfaces (wit/skiff.wit); the app never handles the credentials or a socket.

    import skiff
    db = skiff.pg.connect()
    db.execute("INSERT INTO todos (title) VALUES ($1)", ["write docs"])
    rows = db.query("SELECT id, title FROM todos")      # a list of dicts
    store = skiff.kv.open()
    store.set("visits", b"1")
"""

from componentize_py_types import Err
from wit_world.imports import kv as _kv
from wit_world.imports import postgres as _pg


class Error(Exception):
    """An add-on refused or failed; the message says why."""


def _raise(err):
    value = getattr(err, "value", err)
    message = getattr(value, "value", value)
    raise Error(f"{type(value).__name__.split('_')[-1]}: {message}") from None


def _to_db(v):
    if v is None:
        return _pg.DbValue_Null()
    if isinstance(v, bool):
        return _pg.DbValue_Boolean(v)
    if isinstance(v, int):
        return _pg.DbValue_Int64(v)
    if isinstance(v, float):
        return _pg.DbValue_Float64(v)
    if isinstance(v, str):
        return _pg.DbValue_Text(v)
    if isinstance(v, (bytes, bytearray)):
        return _pg.DbValue_Binary(bytes(v))
    raise TypeError(f"cannot send {type(v).__name__} to PostgreSQL; pass str, int, float, bool, bytes or None")


def _from_db(v):
    return None if isinstance(v, _pg.DbValue_Null) else v.value


class _Connection:
    def __init__(self):
        try:
            self._conn = _pg.Connection.open()
        except Err as e:
            _raise(e)

    def query(self, sql, params=()):
        """Runs a statement returning rows ($1, $2, ... bound to params): a list of dicts."""
        try:
            result = self._conn.query(sql, [_to_db(p) for p in params])
        except Err as e:
            _raise(e)
        names = [c.name for c in result.columns]
        return [dict(zip(names, (_from_db(v) for v in row))) for row in result.rows]

    def execute(self, sql, params=()):
        """Runs a statement; returns how many rows it changed."""
        try:
            return self._conn.execute(sql, [_to_db(p) for p in params])
        except Err as e:
            _raise(e)


class _Store:
    def __init__(self):
        try:
            self._store = _kv.Store.open()
        except Err as e:
            _raise(e)

    def _call(self, f, *args):
        try:
            return f(*args)
        except Err as e:
            _raise(e)

    def get(self, key):
        """The value (bytes) of key, or None."""
        return self._call(self._store.get, key)

    def set(self, key, value):
        """Sets key to value (bytes or str)."""
        if isinstance(value, str):
            value = value.encode()
        self._call(self._store.set, key, bytes(value))

    def delete(self, key):
        self._call(self._store.delete, key)

    def exists(self, key):
        return self._call(self._store.exists, key)

    def keys(self, prefix=""):
        return self._call(self._store.list_keys, prefix)


class pg:
    """The app's PostgreSQL database (DATABASE_URL)."""

    @staticmethod
    def connect():
        return _Connection()


class kv:
    """The app's key-value store (KV_URL)."""

    @staticmethod
    def open():
        return _Store()
