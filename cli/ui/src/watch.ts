// List, then watch: `?watch=1&resourceVersion=<rv>&allowWatchBookmarks=true`,
// read as newline-delimited JSON events from a streaming fetch. A watch that
// ends is resumed from the last resourceVersion seen; a 410 Gone (or any
// error) re-lists. No polling.

import { ApiError, describeList, failureOf, request, unreachable } from './api';

export interface ObjectMeta {
  name: string;
  namespace?: string;
  resourceVersion?: string;
  uid?: string;
}

export interface KObject {
  metadata: ObjectMeta;
}

export type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface WatchHandlers<T> {
  /** The full list, after each (re-)list. */
  reset(items: T[]): void;
  /** One watch event. */
  event(type: EventType, obj: T): void;
  /** An error line to show, or null once listing and watching work again. */
  error(line: string | null): void;
}

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}

class Gone extends Error {}

/**
 * Lists and watches `path` (a collection) until `signal` aborts. `resource`,
 * `group` and `namespace` are for messages.
 */
export async function listWatch<T extends KObject>(
  path: string,
  resource: string,
  group: string,
  namespace: string,
  signal: AbortSignal,
  h: WatchHandlers<T>,
): Promise<void> {
  let backoff = MIN_BACKOFF_MS;
  const fail = async (line: string) => {
    if (signal.aborted) return;
    h.error(line);
    await sleep(backoff, signal);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  };

  while (!signal.aborted) {
    let rv: string;
    try {
      const resp = await request('GET', path, undefined, signal);
      if (!resp.ok) {
        const f = await failureOf(resp);
        throw new ApiError(f, describeList(resource, group, namespace, f));
      }
      const list = (await resp.json()) as { metadata?: { resourceVersion?: string }; items?: T[] };
      if (signal.aborted) return;
      rv = list.metadata?.resourceVersion ?? '';
      h.reset(list.items ?? []);
    } catch (e) {
      if (signal.aborted) return;
      await fail(e instanceof ApiError ? e.message : unreachable(e));
      continue;
    }

    // Watch from rv until an error; a watch that ends normally resumes from
    // the last resourceVersion seen.
    try {
      for (;;) {
        const started = Date.now();
        // An error shown stays until a watch is running again (a list that
        // works and a watch that is refused must not make it flicker).
        rv = await watchOnce(path, rv, resource, group, namespace, signal, h, () => h.error(null));
        if (signal.aborted) return;
        if (Date.now() - started < 1000) {
          // A watch that ends at once, again and again, must not spin.
          await sleep(backoff, signal);
          backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
        } else {
          backoff = MIN_BACKOFF_MS;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof Gone) {
        // The resourceVersion is too old: re-list at once (then back off if that repeats).
        await sleep(Math.min(backoff, 1000), signal);
        continue;
      }
      await fail(e instanceof ApiError ? e.message : `watching ${resource}: ${unreachable(e)}`);
    }
  }
}

/** One watch request; returns the last resourceVersion seen when the stream ends. */
async function watchOnce<T extends KObject>(
  path: string,
  rv: string,
  resource: string,
  group: string,
  namespace: string,
  signal: AbortSignal,
  h: WatchHandlers<T>,
  watching: () => void,
): Promise<string> {
  const q = new URLSearchParams({ watch: '1', allowWatchBookmarks: 'true' });
  if (rv) q.set('resourceVersion', rv);
  const resp = await request('GET', `${path}?${q}`, undefined, signal);
  if (!resp.ok) {
    const f = await failureOf(resp);
    if (f.code === 410) throw new Gone();
    throw new ApiError(f, describeList(resource, group, namespace, f));
  }
  if (!resp.body) throw new Error('the browser cannot stream responses');
  watching();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf += value;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) rv = handleLine(line, rv, resource, group, namespace, h);
      }
    }
    if (buf.trim()) rv = handleLine(buf.trim(), rv, resource, group, namespace, h);
  } finally {
    reader.cancel().catch(() => {});
  }
  return rv;
}

function handleLine<T extends KObject>(
  line: string,
  rv: string,
  resource: string,
  group: string,
  namespace: string,
  h: WatchHandlers<T>,
): string {
  let ev: { type?: string; object?: unknown };
  try {
    ev = JSON.parse(line);
  } catch {
    throw new Error(`watching ${resource}: the API server sent a line that is not JSON`);
  }
  const obj = ev.object as T | undefined;
  switch (ev.type) {
    case 'ADDED':
    case 'MODIFIED':
    case 'DELETED':
      if (!obj?.metadata?.name) return rv;
      h.event(ev.type, obj);
      return obj.metadata.resourceVersion || rv;
    case 'BOOKMARK':
      return obj?.metadata?.resourceVersion || rv;
    case 'ERROR': {
      const s = (ev.object ?? {}) as { code?: number; reason?: string; message?: string };
      if (s.code === 410 || s.reason === 'Expired' || s.reason === 'Gone') throw new Gone();
      const f = { code: s.code ?? 500, reason: s.reason ?? '', message: s.message ?? '' };
      throw new ApiError(f, describeList(resource, group, namespace, f));
    }
    default:
      return rv;
  }
}
