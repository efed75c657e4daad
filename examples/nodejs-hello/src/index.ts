// A Workers-style app: Skiff calls `fetch(request, env)` for every request, and `env` holds
// the app's config vars (so does `process.env`).
import { Hono } from 'hono';

const GREETING = 'Hello from Node.js on Skiff!';

type Bindings = Record<string, string | undefined>;

const app = new Hono<{ Bindings: Bindings }>();

app.get('/', (c) => c.text(`${GREETING}\n`));

app.get('/env/:name', (c) => {
  const value = c.env[c.req.param('name')];
  return value === undefined ? c.text('not set\n', 404) : c.text(`${value}\n`);
});

app.post('/echo', async (c) => {
  const body = await c.req.text();
  return new Response(body, {
    headers: { 'content-type': c.req.header('content-type') ?? 'text/plain' },
  });
});

app.get('/json', (c) => Response.json({ app: 'nodejs-hello', runtime: 'componentize-js', path: c.req.path }));

export default app;
