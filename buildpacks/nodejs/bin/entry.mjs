// The module componentize-js builds: it imports the app and connects its handler to the
// fetch event. Apps written Workers-style (`export default { fetch(request, env, ctx) }`) get
// a listener here; apps that call addEventListener('fetch', ...) themselves need nothing.
import { getEnvironment } from 'wasi:cli/environment@0.2.10';
import '__SKIFF_PRELUDE__';
import * as app from '__SKIFF_APP_ENTRY__';

// Config vars are read when the app asks for them, never cached: the module's top level runs
// once when the component is built, and whatever it captured then is frozen into the build.
function lookup(name) {
  for (const [key, value] of getEnvironment()) {
    if (key === name) return value;
  }
  return undefined;
}

const env = new Proxy(
  {},
  {
    get: (_, name) => (typeof name === 'string' ? lookup(name) : undefined),
    has: (_, name) => typeof name === 'string' && lookup(name) !== undefined,
    ownKeys: () => getEnvironment().map(([key]) => key),
    getOwnPropertyDescriptor: (_, name) => {
      const value = typeof name === 'string' ? lookup(name) : undefined;
      return value === undefined
        ? undefined
        : { value, enumerable: true, configurable: true, writable: false };
    },
  },
);

if (typeof globalThis.process !== 'object' || globalThis.process === null) {
  globalThis.process = { env };
} else {
  globalThis.process.env = env;
}

const handler = app.default;
if (!(handler && typeof handler.fetch === 'function') && globalThis.__skiffFetchListeners === 0) {
  // Thrown while the component is built, so the push fails with this message.
  throw new Error(
    "the app has no fetch handler: export default { fetch(request, env) { ... } } " +
      "(or an object with a fetch method, such as a Hono app), or call " +
      "addEventListener('fetch', (event) => event.respondWith(...))",
  );
}
if (handler && typeof handler.fetch === 'function') {
  addEventListener('fetch', (event) => {
    const ctx = {
      waitUntil: (promise) => event.waitUntil?.(promise),
      passThroughOnException: () => {},
    };
    event.respondWith(
      Promise.resolve()
        .then(() => handler.fetch(event.request, env, ctx))
        .catch((err) => {
          console.error(err && err.stack ? err.stack : String(err));
          return new Response('Internal Server Error\n', { status: 500 });
        }),
    );
  });
}
