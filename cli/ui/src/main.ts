// The web console of `ironctl ui` (issue #19): the VMs and VMIs of a
// namespace, live through watches, with power buttons, screenshots, a serial
// console (xterm.js) and a VNC display (noVNC).
//
// Everything the page loads is relative to its own URL (`./app.js`,
// `./config`, `./k8s/...`): the URL's path carries the session token.

import '@xterm/xterm/css/xterm.css';
import '../style.css';

import type RFB from '@novnc/novnc';
import type { Terminal } from '@xterm/xterm';
import {
  type Config,
  type Kind,
  apiURL,
  describe,
  failureOf,
  loadConfig,
  paths,
  request,
  setBase,
  unreachable,
  validNamespace,
} from './api';
import { ConsolePane } from './console';
import { VncPane } from './vnc';
import { type KObject, listWatch } from './watch';

interface VM extends KObject {
  status?: { printableStatus?: string };
}

interface VMI extends KObject {
  status?: {
    phase?: string;
    nodeName?: string;
    interfaces?: { ipAddress?: string }[];
  };
}

declare global {
  interface Window {
    ironvirtUI: {
      term: Terminal | null;
      rfb: RFB | null;
      ready: boolean;
      namespace: string;
      config: Config | null;
      openConsole(name: string): void;
      openVnc(name: string): void;
    };
  }
}

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`index.html has no #${id}`);
  return el as T;
};

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

const ui: Window['ironvirtUI'] = {
  term: null,
  rfb: null,
  ready: false,
  namespace: '',
  config: null,
  openConsole: (name) => consolePane?.open(ui.namespace, name),
  openVnc: (name) => vncPane?.open(ui.namespace, name),
};
window.ironvirtUI = ui;

// ---- banners ----

const errorEl = $('error');
const errorBox = $('error-box');
const noticeEl = $('notice');
const listErrorEl = $('list-error');

function showError(line: string): void {
  errorEl.textContent = line;
  errorBox.hidden = false;
  noticeEl.textContent = '';
}

function clearError(): void {
  errorEl.textContent = '';
  errorBox.hidden = true;
}

let noticeTimer = 0;
function notice(line: string): void {
  noticeEl.textContent = line;
  clearTimeout(noticeTimer);
  noticeTimer = window.setTimeout(() => (noticeEl.textContent = ''), 6000);
}

$('error-dismiss').addEventListener('click', clearError);

// ---- state ----

const vms = new Map<string, VM>();
const vmis = new Map<string, VMI>();
const listErrors = new Map<string, string>();
const listed = { vms: false, vmis: false };
let watches: AbortController | null = null;

function vmiPhase(name: string): string {
  return vmis.get(name)?.status?.phase ?? '';
}

/** Why no console or VNC can open for `name`, when the list knows it: its VMI is not running. */
function notRunning(name: string): string | null {
  if (!listed.vmis || listErrors.has('vmis')) return null;
  const phase = vmiPhase(name);
  if (!vmis.has(name)) return `it has no VirtualMachineInstance (is the VM running?)`;
  if (phase !== 'Running') return `VirtualMachineInstance "${name}" is not running (phase ${phase || 'unknown'})`;
  return null;
}

// ---- panes ----

let consolePane: ConsolePane | null = null;
let vncPane: VncPane | null = null;

function setupPanes(): void {
  consolePane = new ConsolePane($('console'), $('console-status'), $('console-title'), $<HTMLButtonElement>('console-close'), notRunning);
  ui.term = consolePane.term;
  vncPane = new VncPane(
    $('vnc'),
    $('vnc-status'),
    $('vnc-title'),
    $<HTMLButtonElement>('ctrl-alt-del'),
    $<HTMLButtonElement>('vnc-close'),
    notRunning,
    (rfb) => (ui.rfb = rfb),
  );
}

// ---- actions ----

type Action = 'start' | 'stop' | 'restart' | 'pause' | 'unpause' | 'console' | 'vnc';

const VM_ACTIONS: Action[] = ['start', 'stop', 'restart', 'pause', 'unpause', 'console', 'vnc'];
const VMI_ACTIONS: Action[] = ['pause', 'unpause', 'console', 'vnc'];
const LABELS: Record<Action, string> = {
  start: 'Start',
  stop: 'Stop',
  restart: 'Restart',
  pause: 'Pause',
  unpause: 'Unpause',
  console: 'Console',
  vnc: 'VNC',
};

async function act(action: Action, name: string, button: HTMLButtonElement, isVm: boolean): Promise<void> {
  const ns = ui.namespace;
  if (action === 'console') {
    consolePane?.open(ns, name);
    $('console-pane').scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    return;
  }
  if (action === 'vnc') {
    vncPane?.open(ns, name);
    $('vnc-pane').scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    return;
  }
  const onVm = action === 'start' || action === 'stop' || action === 'restart';
  const kind: Kind = onVm ? 'VirtualMachine' : 'VirtualMachineInstance';
  const body = action === 'start' ? { paused: false } : {};
  const path = paths.subresource(onVm ? 'virtualmachines' : 'virtualmachineinstances', ns, name, action);
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    const resp = await request('PUT', path, body);
    if (resp.ok) {
      clearError();
      notice(`${isVm ? 'VM' : 'VMI'} ${name} was scheduled to ${action}`);
    } else {
      showError(`${action} ${kind} ${name}: ${describe(kind, name, ns, await failureOf(resp))}`);
    }
  } catch (e) {
    showError(`${action} ${kind} ${name}: ${unreachable(e)}`);
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

// ---- the table ----

const tbody = $('vm-list');
const table = $('vm-table');
const countEl = $('vm-count');

interface Row {
  tr: HTMLTableRowElement;
  name: string;
  status: HTMLElement;
  phase: HTMLElement;
  node: HTMLElement;
  ip: HTMLElement;
  shotCell: HTMLElement;
  img: HTMLImageElement | null;
}

const rows = new Map<string, Row>();
let placeholder: HTMLTableRowElement | null = null;

function makeRow(key: string, name: string, isVm: boolean): Row {
  const status = h('span', { 'data-field': 'status', class: 'pill' });
  const phase = h('td', { 'data-field': 'phase' });
  const node = h('td', { 'data-field': 'node' });
  const ip = h('td', { 'data-field': 'ip', class: 'mono' });
  const shotCell = h('td', { class: 'shot' });
  const actions = h('td', { class: 'actions' });
  for (const a of isVm ? VM_ACTIONS : VMI_ACTIONS) {
    const b = h('button', { type: 'button', 'data-action': a, class: `btn btn-${a}` }, LABELS[a]);
    b.setAttribute('aria-label', `${LABELS[a]} ${name}`);
    b.addEventListener('click', () => void act(a, name, b, isVm));
    actions.append(b);
  }
  const nameCell = h('td', { class: 'name' }, h('span', { 'data-field': 'name' }, name));
  if (!isVm) nameCell.append(' ', h('span', { class: 'tag', title: 'a VirtualMachineInstance with no VirtualMachine' }, 'VMI'));
  const tr = h('tr', isVm ? { 'data-vm': name } : { 'data-vmi': name }, nameCell, h('td', {}, status), phase, node, ip, shotCell, actions);
  tr.dataset.key = key;
  return { tr, name, status, phase, node, ip, shotCell, img: null };
}

function stateClass(s: string): string {
  const v = s.toLowerCase();
  if (v === 'running') return 'ok';
  if (v === 'stopped' || v === 'succeeded' || v === '') return 'off';
  if (v === 'paused') return 'paused';
  if (/error|fail|crash|backoff|unschedulable|pull|unknown/.test(v)) return 'bad';
  return 'busy';
}

function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

function screenshotURL(name: string): string {
  return `${apiURL(paths.subresource('virtualmachineinstances', ui.namespace, name, 'vnc/screenshot'))}?t=${Date.now()}`;
}

function refreshShot(row: Row): void {
  if (row.img && document.visibilityState === 'visible') row.img.src = screenshotURL(row.name);
}

function updateShot(row: Row, running: boolean): void {
  if (running && !row.img) {
    const img = h('img', {
      'data-screenshot': row.name,
      alt: `screen of ${row.name}`,
      title: `screen of ${row.name}: click for VNC`,
      width: '64',
      height: '40',
      decoding: 'async',
      referrerpolicy: 'no-referrer',
    });
    img.hidden = true;
    img.addEventListener('load', () => (img.hidden = false));
    img.addEventListener('error', () => (img.hidden = true));
    img.tabIndex = 0;
    img.setAttribute('role', 'button');
    img.addEventListener('click', () => vncPane?.open(ui.namespace, row.name));
    img.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        vncPane?.open(ui.namespace, row.name);
      }
    });
    row.shotCell.append(img);
    row.img = img;
    refreshShot(row);
  } else if (!running && row.img) {
    row.img.remove();
    row.img = null;
  }
}

function ipOf(vmi: VMI | undefined): string {
  for (const i of vmi?.status?.interfaces ?? []) if (i.ipAddress) return i.ipAddress;
  return '';
}

function render(): void {
  const names = new Set<string>([...vms.keys(), ...vmis.keys()]);
  const order = [...names].sort((a, b) => a.localeCompare(b));
  const keep = new Set<string>();
  let i = 0;
  for (const name of order) {
    const vm = vms.get(name);
    const vmi = vmis.get(name);
    const key = vm ? `vm:${name}` : `vmi:${name}`;
    keep.add(key);
    let row = rows.get(key);
    if (!row) {
      row = makeRow(key, name, !!vm);
      rows.set(key, row);
    }
    const printable = vm?.status?.printableStatus ?? '';
    const phase = vmi?.status?.phase ?? '';
    setText(row.status, printable);
    row.status.dataset.state = vm ? stateClass(printable) : 'none';
    setText(row.phase, phase);
    row.phase.dataset.state = stateClass(phase);
    setText(row.node, vmi?.status?.nodeName ?? '');
    setText(row.ip, ipOf(vmi));
    updateShot(row, phase === 'Running');
    if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] ?? null);
    i++;
  }
  for (const [key, row] of rows) {
    if (!keep.has(key)) {
      row.tr.remove();
      rows.delete(key);
    }
  }

  // The placeholder row: loading, or an empty namespace.
  const loading = !listed.vms || !listed.vmis;
  const failed = listErrors.size > 0;
  let text = '';
  if (order.length === 0 && !failed) {
    text = loading ? 'Loading…' : `No VirtualMachines or VirtualMachineInstances in namespace "${ui.namespace}".`;
  }
  if (text) {
    placeholder ??= h('tr', { class: 'placeholder' }, h('td', { colspan: '7' }));
    setText(placeholder.firstElementChild as HTMLElement, text);
    if (placeholder.parentElement !== tbody || tbody.lastElementChild !== placeholder) tbody.append(placeholder);
  } else {
    placeholder?.remove();
  }
  // A list that fails shows its message instead of an empty table.
  table.hidden = failed && order.length === 0;
  setText(countEl, (loading || failed) && order.length === 0 ? '' : `${order.length}`);
}

function renderListErrors(): void {
  const lines = [...new Set(listErrors.values())];
  listErrorEl.replaceChildren(...lines.map((l) => h('div', {}, l)));
  listErrorEl.hidden = lines.length === 0;
}

function firstListed(): void {
  if (listed.vms && listed.vmis && !ui.ready) ui.ready = true;
}

// ---- namespaces ----

function startWatches(ns: string): void {
  watches?.abort();
  const ctl = new AbortController();
  watches = ctl;
  vms.clear();
  vmis.clear();
  listErrors.clear();
  listed.vms = listed.vmis = false;
  renderListErrors();
  render();

  const watch = <T extends KObject>(key: 'vms' | 'vmis', resource: 'virtualmachines' | 'virtualmachineinstances', store: Map<string, T>) =>
    void listWatch<T>(paths.collection(resource, ns), resource, 'kubevirt.io/v1', ns, ctl.signal, {
      reset(items) {
        if (ctl.signal.aborted) return;
        store.clear();
        for (const o of items) store.set(o.metadata.name, o);
        listed[key] = true;
        render();
        firstListed();
      },
      event(type, obj) {
        if (ctl.signal.aborted) return;
        if (type === 'DELETED') store.delete(obj.metadata.name);
        else store.set(obj.metadata.name, obj);
        scheduleRender();
      },
      error(line) {
        if (ctl.signal.aborted) return;
        if (line === null) {
          if (!listErrors.delete(key)) return;
        } else {
          listErrors.set(key, line);
          listed[key] = true;
        }
        renderListErrors();
        render();
        firstListed();
      },
    });
  watch<VM>('vms', 'virtualmachines', vms as Map<string, VM>);
  watch<VMI>('vmis', 'virtualmachineinstances', vmis as Map<string, VMI>);
}

let renderQueued = false;
function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    render();
  });
}

function switchNamespace(ns: string): void {
  ns = ns.trim();
  if (ns === ui.namespace) return;
  if (!validNamespace(ns)) {
    showError(`"${ns}" is not a namespace name (lower-case letters, digits and '-', at most 63)`);
    return;
  }
  clearError();
  ui.namespace = ns;
  history.replaceState(null, '', `#ns=${encodeURIComponent(ns)}`);
  $('ns-label').textContent = ns;
  startWatches(ns);
}

/** The namespace picker: a <select> of the namespaces, or a text input when listing them is forbidden. */
async function setupNamespacePicker(initial: string): Promise<void> {
  const slot = $('namespace-slot');
  let names: string[] | null = null;
  try {
    const resp = await request('GET', paths.namespaces());
    if (resp.ok) {
      const list = (await resp.json()) as { items?: KObject[] };
      names = (list.items ?? []).map((n) => n.metadata.name).filter(Boolean);
    }
  } catch {
    // unreachable: the lists will say so
  }
  let picker: HTMLSelectElement | HTMLInputElement;
  if (names) {
    if (!names.includes(initial)) names.push(initial);
    names.sort((a, b) => a.localeCompare(b));
    picker = h('select', { id: 'namespace', 'aria-label': 'Namespace' }, ...names.map((n) => h('option', { value: n }, n)));
    picker.value = initial;
  } else {
    const input = h('input', {
      id: 'namespace',
      type: 'text',
      'aria-label': 'Namespace',
      spellcheck: 'false',
      autocomplete: 'off',
      title: 'You may not list namespaces: type one and press Enter',
      value: initial,
    });
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') switchNamespace(input.value);
    });
    picker = input;
  }
  picker.addEventListener('change', () => switchNamespace(picker.value));
  slot.replaceChildren(picker);
}

// ---- start ----

async function main(): Promise<void> {
  setupPanes();
  let cfg: Config;
  try {
    cfg = await loadConfig();
  } catch (e) {
    showError(e instanceof TypeError ? unreachable(e) : String((e as Error).message ?? e));
    cfg = { namespace: 'default', context: '', server: '', base: './k8s/', kubectlProxy: false };
  }
  ui.config = cfg;
  setBase(cfg.base);
  $('context').textContent = cfg.kubectlProxy ? 'kubectl proxy' : cfg.context || '(no context name)';
  $('server').textContent = cfg.kubectlProxy ? '' : cfg.server;

  const fromHash = new URLSearchParams(location.hash.slice(1)).get('ns');
  const initial = fromHash && validNamespace(fromHash) ? fromHash : cfg.namespace;
  await setupNamespacePicker(initial);
  switchNamespace(initial);

  // Screenshots: every 10 s while the VMI runs and the page is visible.
  setInterval(() => rows.forEach(refreshShot), 10_000);
  document.addEventListener('visibilitychange', () => rows.forEach(refreshShot));
}

void main();
