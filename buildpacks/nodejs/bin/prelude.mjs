// Evaluated before the app's module: notes whether the app registers a fetch listener itself,
// so entry.mjs can tell at build time that an app has no handler at all.
const register = globalThis.addEventListener;
globalThis.__skiffFetchListeners = 0;
globalThis.addEventListener = function (type, ...rest) {
  if (type === 'fetch') globalThis.__skiffFetchListeners += 1;
  return register.call(this, type, ...rest);
};
