// Builds the web console of `ironctl ui` into DIR (default dist/): exactly
// index.html, app.js and app.css, which cli/src/ui.rs embeds. Deterministic:
// the same sources and lockfile give byte-identical files.
//
//   node build.mjs [DIR]

import { copyFile, mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, 'dist'));

const banner =
  '/* ironvirt web console (cli/ui). Bundles @xterm/xterm 6.0.0 (MIT, https://github.com/xtermjs/xterm.js) ' +
  'and @novnc/novnc 1.7.0 (MPL-2.0, https://github.com/novnc/noVNC; with pako, MIT/Zlib). */';

// noVNC probes for H.264 decoding with a top-level await (core/util/browser.js),
// which would hold the whole page until a VideoDecoder has decoded a test
// frame. Run the probe in the background instead: the flag is a live `let`
// read when a VNC session negotiates encodings (and QEMU's VNC server does
// not offer H.264 anyway).
const PROBE = 'supportsWebCodecsH264Decode = await _checkWebCodecsH264DecodeSupport();';
const novncProbeInBackground = {
  name: 'novnc-probe-in-background',
  setup(build) {
    build.onLoad({ filter: /@novnc[\\/]novnc[\\/]core[\\/]util[\\/]browser\.js$/ }, async (args) => {
      const src = await readFile(args.path, 'utf8');
      if (!src.includes(PROBE)) throw new Error(`${args.path}: noVNC's H.264 probe changed; update build.mjs`);
      const contents = src.replace(
        PROBE,
        '_checkWebCodecsH264DecodeSupport().then((ok) => { supportsWebCodecsH264Decode = ok; }, () => {});',
      );
      return { contents, loader: 'js' };
    });
  },
};

await mkdir(out, { recursive: true });
for (const f of await readdir(out)) {
  if (!['index.html', 'app.js', 'app.css'].includes(f)) await rm(join(out, f), { recursive: true, force: true });
}

await esbuild.build({
  absWorkingDir: here,
  entryPoints: { app: 'src/main.ts' },
  outdir: out,
  bundle: true,
  format: 'esm',
  plugins: [novncProbeInBackground],
  platform: 'browser',
  target: ['es2022', 'chrome100', 'firefox100', 'safari16'],
  minify: true,
  sourcemap: false,
  legalComments: 'none',
  banner: { js: banner, css: banner },
  charset: 'utf8',
  logLevel: 'warning',
  metafile: false,
  write: true,
});
await copyFile(join(here, 'index.html'), join(out, 'index.html'));

const files = (await readdir(out)).sort();
if (files.join(' ') !== 'app.css app.js index.html') {
  throw new Error(`${out} holds ${files.join(', ')}; expected app.css, app.js, index.html`);
}
