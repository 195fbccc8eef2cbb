// Loads one test file (?file=…) in the test page and exposes `window.__suite` to run.mjs:
// `{names, run(name)}` once the file (and so its package entry and init()) loaded, or
// `{loadError}`. `run(name)` resolves with `{ok, error?, ms}`.
const file = new URLSearchParams(location.search).get("file");

function describe(e) {
  if (e instanceof Error) return `${e.message}${e.code !== undefined ? ` (code ${e.code})` : ""}`;
  try {
    return `rejected/thrown non-Error: ${JSON.stringify(e)}`;
  } catch {
    return `rejected/thrown non-Error: ${String(e)}`;
  }
}

try {
  if (!/^[\w-]+\.test\.mjs$/.test(file ?? "")) throw new Error(`bad test file name ${file}`);
  const { tests } = await import(`./${file}`);
  window.__suite = {
    names: tests.map((t) => t.name),
    async run(name) {
      const t = tests.find((x) => x.name === name);
      if (!t) return { ok: false, error: `no test named ${JSON.stringify(name)} in ${file}`, ms: 0 };
      const t0 = performance.now();
      try {
        await t.fn();
        return { ok: true, ms: performance.now() - t0 };
      } catch (e) {
        return { ok: false, error: describe(e), ms: performance.now() - t0 };
      }
    },
  };
} catch (e) {
  window.__suite = { loadError: `${file}: ${e?.stack ?? e}` };
}
