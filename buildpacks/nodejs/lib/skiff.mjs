// Skiff's add-ons from JavaScript: the app's PostgreSQL database and key-value store.
//
//   import { db, kv, SkiffError } from 'skiff';
//   const rows = await db.query('SELECT id, title FROM todos WHERE id = $1', [id]);
//   const changed = await db.execute('UPDATE todos SET done = true WHERE id = $1', [id]);
//   await kv.set('visits', '1');
//   const visits = await kv.get('visits'); // a string, or null
//
// The host opens what the app's own config names (DATABASE_URL, KV_URL) through Skiff's
// interfaces (wit/skiff.wit); the app never handles the credentials or a socket. The
// buildpack resolves `skiff` to this file when the app is bundled.
//
// Every call returns a promise, as database clients in JavaScript do, although the host
// answers each call before it returns.
import { Connection } from 'skiff:addons/postgres@0.1.0';
import { Store } from 'skiff:addons/kv@0.1.0';

/** An add-on refused or failed. `kind` is the interface's error case (`not-configured`,
 * `connection-failed`, `query-failed`, `value-conversion`, `access-denied`, `store-failed`). */
export class SkiffError extends Error {
  constructor(kind, message) {
    super(`${kind}: ${message}`);
    this.name = 'SkiffError';
    this.kind = kind;
  }
}

// Host errors arrive as a thrown error whose payload is the WIT variant ({ tag, val }).
function rethrow(err) {
  const payload = err && err.payload;
  if (payload && typeof payload.tag === 'string') {
    throw new SkiffError(payload.tag, String(payload.val));
  }
  throw err;
}

function call(f) {
  try {
    return f();
  } catch (err) {
    rethrow(err);
  }
}

function toDb(v, i) {
  if (v === null || v === undefined) return { tag: 'null' };
  switch (typeof v) {
    case 'boolean':
      return { tag: 'boolean', val: v };
    case 'bigint':
      return { tag: 'int64', val: v };
    case 'number':
      // The host converts an integer to whatever numeric type the statement expects.
      return Number.isSafeInteger(v) ? { tag: 'int64', val: BigInt(v) } : { tag: 'float64', val: v };
    case 'string':
      return { tag: 'text', val: v };
    default:
      if (v instanceof Uint8Array) return { tag: 'binary', val: v };
      if (v instanceof ArrayBuffer) return { tag: 'binary', val: new Uint8Array(v) };
      if (ArrayBuffer.isView(v)) {
        return { tag: 'binary', val: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) };
      }
      throw new TypeError(
        `parameter $${i + 1}: cannot send ${v?.constructor?.name ?? typeof v} to PostgreSQL; ` +
          'pass a string, number, bigint, boolean, Uint8Array or null (or a string cast in SQL)',
      );
  }
}

function fromDb(v) {
  switch (v.tag) {
    case 'null':
      return null;
    case 'int64':
      // int8 columns (ids, count(*)) read as numbers while exact, as BigInt beyond that.
      return v.val >= BigInt(Number.MIN_SAFE_INTEGER) && v.val <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(v.val)
        : v.val;
    default:
      return v.val;
  }
}

function params(values) {
  if (values === undefined) return [];
  if (!Array.isArray(values)) throw new TypeError('query parameters are an array: [value1, value2, ...]');
  return values.map(toDb);
}

/** A session on the app's database. */
export class PgConnection {
  #conn;

  constructor(conn) {
    this.#conn = conn;
  }

  /** Runs a statement that returns rows ($1, $2, ... bound to `values`): an array of
   * plain objects, one per row, keyed by column name. */
  async query(sql, values) {
    const bound = params(values);
    const result = call(() => this.#conn.query(sql, bound));
    const names = result.columns.map((c) => c.name);
    return result.rows.map((row) => {
      const out = {};
      row.forEach((v, i) => {
        out[names[i]] = fromDb(v);
      });
      return out;
    });
  }

  /** Runs a statement; resolves to how many rows it changed. */
  async execute(sql, values) {
    const bound = params(values);
    return Number(call(() => this.#conn.execute(sql, bound)));
  }

  /** Gives the session back to the host's pool now rather than when the request ends. */
  close() {
    // The bindings key resources' release by Symbol.dispose, or its registered stand-in
    // where the engine has no Symbol.dispose.
    this.#conn?.[Symbol.dispose ?? Symbol.for('dispose')]?.();
    this.#conn = undefined;
  }
}

/** The app's PostgreSQL database (DATABASE_URL). */
export const pg = {
  /** A session of its own (for a transaction kept apart from `db`'s). */
  connect() {
    return new PgConnection(call(() => Connection.open()));
  },
};

// `db` opens one session the first time it is used in a request and keeps it for the rest of
// the request; a new instance serves each request, so nothing outlives it.
let shared = null;
function sharedConnection() {
  if (shared === null) shared = pg.connect();
  return shared;
}
async function onShared(f) {
  const conn = sharedConnection();
  try {
    return await f(conn);
  } catch (err) {
    // A session the server ended is not reused; the next call opens a fresh one.
    if (err instanceof SkiffError && err.kind === 'connection-failed' && shared === conn) {
      shared = null;
      conn.close();
    }
    throw err;
  }
}

/** The app's database through one session per request: `await db.query(sql, [values])`. */
export const db = {
  query: (sql, values) => onShared((c) => c.query(sql, values)),
  execute: (sql, values) => onShared((c) => c.execute(sql, values)),
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function bytes(value) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new TypeError('a kv value is a string or a Uint8Array (JSON.stringify objects first)');
}

let store = null;
function openStore() {
  if (store === null) store = call(() => Store.open());
  return store;
}

/** The app's key-value store (KV_URL). */
export const kv = {
  /** The value of `key` as a string (UTF-8), or null when it is not set. */
  async get(key) {
    const v = call(() => openStore().get(key));
    return v === undefined || v === null ? null : decoder.decode(v);
  },
  /** The value of `key` as bytes, or null when it is not set. */
  async getBytes(key) {
    const v = call(() => openStore().get(key));
    return v === undefined || v === null ? null : v;
  },
  /** Sets `key` to `value` (a string or a Uint8Array). */
  async set(key, value) {
    const b = bytes(value);
    call(() => openStore().set(key, b));
  },
  /** Removes `key`; removing a missing key is not an error. */
  async delete(key) {
    call(() => openStore().delete(key));
  },
  /** Whether `key` is set. */
  async has(key) {
    return call(() => openStore().exists(key));
  },
  /** Keys starting with `prefix` (all keys when omitted), in order. */
  async keys(prefix = '') {
    return call(() => openStore().listKeys(prefix));
  },
};

export default { db, pg, kv, SkiffError };
