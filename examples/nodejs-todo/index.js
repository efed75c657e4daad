// A small todo list on Skiff: rows in the app's PostgreSQL database (`skiff addons:create
// postgres`), a visit counter and free-form keys in its key-value store (`skiff addons:create
// kv`). `skiff` is the add-on module the Node.js buildpack ships.
//
// GET /todos lists, POST /todos (body: the title) adds, POST /todos/:id/done marks done,
// GET /visits counts, GET/PUT/DELETE /kv/:key reads, sets and removes a key.
import { db, kv, SkiffError } from 'skiff';

const text = (body, status = 200) =>
  new Response(body, { status, headers: { 'content-type': 'text/plain; charset=utf-8' } });

async function todos() {
  await db.execute(
    'CREATE TABLE IF NOT EXISTS todos (' +
      ' id serial PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false)',
  );
  return db;
}

async function route(request) {
  const { pathname } = new URL(request.url);
  const method = request.method;

  if (pathname === '/todos' && method === 'GET') {
    const rows = await (await todos()).query('SELECT id, title, done FROM todos ORDER BY id');
    return Response.json(rows);
  }
  if (pathname === '/todos' && method === 'POST') {
    const title = (await request.text()).trim();
    if (!title) return text('a todo needs a title\n', 400);
    const [row] = await (await todos()).query(
      'INSERT INTO todos (title) VALUES ($1) RETURNING id',
      [title],
    );
    return text(`${row.id}\n`, 201);
  }
  const done = pathname.match(/^\/todos\/(\d+)\/done$/);
  if (done && method === 'POST') {
    const changed = await (await todos()).execute('UPDATE todos SET done = true WHERE id = $1', [
      Number(done[1]),
    ]);
    return changed === 0 ? text('no such todo\n', 404) : text('done\n');
  }
  if (pathname === '/visits' && method === 'GET') {
    const visits = Number((await kv.get('visits')) ?? '0') + 1;
    await kv.set('visits', String(visits));
    return text(`${visits}\n`);
  }
  const key = pathname.match(/^\/kv\/([\w.-]+)$/);
  if (key) {
    if (method === 'GET') {
      const value = await kv.get(key[1]);
      return value === null ? text('not set\n', 404) : text(value);
    }
    if (method === 'PUT') {
      await kv.set(key[1], new Uint8Array(await request.arrayBuffer()));
      return text('stored\n');
    }
    if (method === 'DELETE') {
      await kv.delete(key[1]);
      return text('deleted\n');
    }
  }
  return text('not found\n', 404);
}

export default {
  async fetch(request) {
    try {
      return await route(request);
    } catch (err) {
      if (err instanceof SkiffError) {
        return text(`${err.message}\n`, err.kind === 'not-configured' ? 503 : 500);
      }
      throw err;
    }
  },
};
