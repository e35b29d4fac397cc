// Talking to kube-apiserver through the server of `ironctl ui` (or `kubectl
// proxy`), and turning what it answers into the one line a user reads: the
// same wording as ironctl's (cli/src/status.rs).

/** The page's configuration, from `./config`. */
export interface Config {
  namespace: string;
  context: string;
  server: string;
  /** Where the Kubernetes API is, relative to the page: `./k8s/`, or `/` under kubectl proxy. */
  base: string;
  /** True when served by `kubectl proxy --www` (no `./config`). */
  kubectlProxy: boolean;
}

let base = './k8s/';

/** The API group of the subresources. */
export const SUBRESOURCES = 'subresources.kubevirt.io/v1';

/** The websocket subprotocol of KubeVirt's console and VNC streams. */
export const STREAM_SUBPROTOCOL = 'plain.kubevirt.io';

/** A failed API answer. */
export interface Failure {
  code: number;
  reason: string;
  message: string;
}

/** What a request is about, as in ironctl's `Subject`. */
export type Kind = 'VirtualMachine' | 'VirtualMachineInstance';

/** An API answer that was not a success, already described for the user. */
export class ApiError extends Error {
  constructor(
    public failure: Failure,
    line: string,
  ) {
    super(line);
  }
}

/** The page's own server could not be reached at all. */
export function unreachable(e: unknown): string {
  const why = e instanceof Error && e.message ? `: ${e.message}` : '';
  return `cannot reach the server of \`ironctl ui\` at ${location.host}${why} (is \`ironctl ui\` still running?)`;
}

/** Collapses whitespace runs (newlines included) to single spaces. */
export function oneLine(s: string): string {
  return s.split(/\s+/).filter(Boolean).join(' ');
}

const MAX_TEXT = 300;

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  410: 'Gone',
  422: 'Unprocessable Entity',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** Reads a Status body; any other body is taken as text (first line, shortened). */
export function parseFailure(code: number, body: string, statusText = ''): Failure {
  try {
    const s: unknown = JSON.parse(body);
    if (s && typeof s === 'object') {
      const o = s as { kind?: unknown; message?: unknown; reason?: unknown };
      const message = typeof o.message === 'string' ? o.message : '';
      if (o.kind === 'Status' || message) {
        return { code, reason: typeof o.reason === 'string' ? o.reason : '', message: oneLine(message) };
      }
    }
  } catch {
    // not JSON: text
  }
  const first = body
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l);
  let message = first ?? '';
  if (message.length > MAX_TEXT) message = message.slice(0, MAX_TEXT) + '…';
  return { code, reason: statusText || REASONS[code] || '', message };
}

function reasonOf(f: Failure): string {
  return f.reason || REASONS[f.code] || 'error';
}

const notServed = (msg: string) =>
  !msg ||
  msg.includes('could not find the requested resource') ||
  msg.toLowerCase() === '404 page not found';

function unauthorized(msg: string): string {
  let s = 'unauthorized: kube-apiserver did not accept the credentials of your kubeconfig';
  if (msg && msg.toLowerCase() !== 'unauthorized') s += ` (${msg})`;
  return s;
}

function otherwise(f: Failure): string {
  const msg = f.message;
  if (f.code === 429) return `kube-apiserver is busy (429 Too Many Requests): ${msg}`;
  return msg
    ? `the API server answered ${f.code} ${reasonOf(f)}: ${msg}`
    : `the API server answered ${f.code} ${reasonOf(f)}`;
}

/** The line for `f`, a failed request about the object `name` (ironctl's `status::describe`). */
export function describe(kind: Kind, name: string, namespace: string, f: Failure): string {
  const msg = f.message;
  switch (f.code) {
    case 401:
      return unauthorized(msg);
    case 403:
      return msg || `forbidden: you may not do this to ${kind} "${name}" in namespace "${namespace}"`;
    case 404:
      if (notServed(msg)) {
        return `the cluster does not serve ${SUBRESOURCES}: is ironvirt (or KubeVirt) installed, and is its APIService Available?`;
      }
      if (msg.includes('not found') && msg.includes(`"${name}"`)) {
        return `${kind} "${name}" not found in namespace "${namespace}"`;
      }
      return msg;
    case 503:
      if (!msg || msg.toLowerCase() === 'service unavailable') {
        return `the ${SUBRESOURCES} API is unavailable: kube-apiserver cannot reach its server (ironvirt-api)`;
      }
      return msg;
    case 400:
    case 409:
    case 422:
      if (msg) return msg;
  }
  return otherwise(f);
}

/** The line for a failed list or watch of `resource` (e.g. `virtualmachines`). */
export function describeList(resource: string, group: string, namespace: string, f: Failure): string {
  const msg = f.message;
  switch (f.code) {
    case 401:
      return unauthorized(msg);
    case 403:
      return msg || `forbidden: you may not list ${resource} in namespace "${namespace}"`;
    case 404:
      if (notServed(msg)) {
        return `the cluster does not serve ${group} (${resource}): is ironvirt (or KubeVirt) installed?`;
      }
      return msg;
    case 400:
    case 409:
    case 422:
    case 503:
      if (msg) return msg;
  }
  return otherwise(f);
}

/** Reads the failure out of a response that is not ok. */
export async function failureOf(resp: Response): Promise<Failure> {
  const text = await resp.text().catch(() => '');
  return parseFailure(resp.status, text, resp.statusText);
}

export function setBase(b: string): void {
  base = b;
}

/** The URL (relative to the page, or absolute path under kubectl proxy) of an API path. */
export function apiURL(path: string): string {
  return base + path;
}

/** The ws:// or wss:// URL of an API path. */
export function wsURL(path: string): string {
  const u = new URL(apiURL(path), location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

const seg = encodeURIComponent;

export const paths = {
  namespaces: () => 'api/v1/namespaces',
  collection: (resource: 'virtualmachines' | 'virtualmachineinstances', ns: string) =>
    `apis/kubevirt.io/v1/namespaces/${seg(ns)}/${resource}`,
  subresource: (resource: 'virtualmachines' | 'virtualmachineinstances', ns: string, name: string, sub: string) =>
    `apis/${SUBRESOURCES}/namespaces/${seg(ns)}/${resource}/${seg(name)}/${sub}`,
};

/** A request to the API; throws `TypeError` when the server cannot be reached at all. */
export function request(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
  const init: RequestInit = {
    method,
    headers: { Accept: 'application/json' },
    cache: 'no-store',
    credentials: 'same-origin',
    referrerPolicy: 'no-referrer',
    signal,
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)['Content-Type'] = 'application/json';
  }
  return fetch(apiURL(path), init);
}

/** Loads `./config`; a 404 means kubectl proxy: the API at `/`, namespace `default`. */
export async function loadConfig(): Promise<Config> {
  const fallback: Config = { namespace: 'default', context: '', server: '', base: '/', kubectlProxy: true };
  const resp = await fetch('./config', { cache: 'no-store', credentials: 'same-origin', referrerPolicy: 'no-referrer' });
  if (resp.status === 404) return fallback;
  if (!resp.ok) {
    const f = await failureOf(resp);
    throw new Error(`./config: ${f.message || `${f.code} ${reasonOf(f)}`}`);
  }
  const c = (await resp.json()) as Partial<Config>;
  return {
    namespace: typeof c.namespace === 'string' && c.namespace ? c.namespace : 'default',
    context: typeof c.context === 'string' ? c.context : '',
    server: typeof c.server === 'string' ? c.server : '',
    base: './k8s/',
    kubectlProxy: false,
  };
}

/** A Kubernetes namespace name (RFC 1123 label). */
export function validNamespace(ns: string): boolean {
  return /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(ns) && ns.length <= 63;
}
