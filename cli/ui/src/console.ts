// The serial console pane: an xterm.js terminal (DOM renderer) on the
// console websocket of one VMI. Bytes both ways travel as binary frames.

import { Terminal } from '@xterm/xterm';
import { paths, STREAM_SUBPROTOCOL, wsURL } from './api';

const MIN_COLS = 20;
const MIN_ROWS = 5;
/** The width xterm.js 6 keeps for its scrollbar. */
const SCROLLBAR_PX = 14;

/** Why a websocket closed, for a status line. */
export function closeReason(ev: CloseEvent): string {
  if (ev.reason) return ev.reason;
  switch (ev.code) {
    case 1000:
      return 'closed by the server (1000)';
    case 1001:
      return 'the server went away (1001)';
    case 1006:
      return 'the connection was lost (1006)';
    case 1011:
      return 'the server failed (1011)';
    default:
      return `code ${ev.code}`;
  }
}

export class ConsolePane {
  readonly term: Terminal;
  private ws: WebSocket | null = null;
  private name = '';
  private readonly encoder = new TextEncoder();

  constructor(
    private readonly host: HTMLElement,
    private readonly statusEl: HTMLElement,
    private readonly titleEl: HTMLElement,
    private readonly closeBtn: HTMLButtonElement,
    /** Why a console of `name` may not open, when the list knows (its VMI is not running). */
    private readonly notRunning: (name: string) => string | null,
  ) {
    this.term = new Terminal({
      scrollback: 5000,
      cursorBlink: true,
      fontSize: 13,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Cascadia Mono", Menlo, Consolas, monospace',
      theme: { background: '#0f1419', foreground: '#d8dee9', cursor: '#d8dee9' },
    });
    this.term.open(host);
    this.term.onData((d) => this.send(this.encoder.encode(d)));
    this.term.onBinary((d) => {
      const bytes = new Uint8Array(d.length);
      for (let i = 0; i < d.length; i++) bytes[i] = d.charCodeAt(i) & 0xff;
      this.send(bytes);
    });
    new ResizeObserver(() => this.fit()).observe(host);
    this.fit();
    this.closeBtn.addEventListener('click', () => this.close('disconnected'));
    this.setStatus('no console open: press Console on a running VM', 'idle');
  }

  private send(bytes: Uint8Array): void {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  private setStatus(text: string, state: 'idle' | 'connecting' | 'connected' | 'closed' | 'error'): void {
    this.statusEl.textContent = text;
    this.statusEl.dataset.state = state;
    this.host.dataset.state = state;
  }

  /** Sizes the terminal to its pane (what xterm's fit addon does). */
  fit(): void {
    // xterm.js has no public API for the cell size; the fit addon reads the same field.
    const core = (this.term as unknown as { _core?: { _renderService?: { dimensions?: { css?: { cell?: { width: number; height: number } } } } } })._core;
    const cell = core?._renderService?.dimensions?.css?.cell;
    const el = this.term.element;
    if (!cell || !cell.width || !cell.height || !el) return;
    const style = getComputedStyle(this.host);
    const width = this.host.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - SCROLLBAR_PX;
    const height = this.host.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    if (width <= 0 || height <= 0) return;
    const cols = Math.max(MIN_COLS, Math.floor(width / cell.width));
    const rows = Math.max(MIN_ROWS, Math.floor(height / cell.height));
    if (cols !== this.term.cols || rows !== this.term.rows) this.term.resize(cols, rows);
  }

  /** The VMI whose console is open (or opening), or ''. */
  get current(): string {
    return this.ws ? this.name : '';
  }

  /** Opens the console of VMI `name` in `ns`, closing any other. */
  open(ns: string, name: string): void {
    this.close(null);
    this.name = name;
    this.titleEl.textContent = name;
    this.term.reset();
    this.fit();
    this.setStatus(`connecting to ${name}…`, 'connecting');
    this.closeBtn.disabled = false;

    const ws = new WebSocket(wsURL(paths.subresource('virtualmachineinstances', ns, name, 'console')), [STREAM_SUBPROTOCOL]);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let opened = false;
    ws.addEventListener('open', () => {
      if (this.ws !== ws) return;
      opened = true;
      this.setStatus('connected', 'connected');
      this.term.focus();
    });
    ws.addEventListener('message', (ev: MessageEvent) => {
      if (this.ws !== ws) return;
      if (ev.data instanceof ArrayBuffer) this.term.write(new Uint8Array(ev.data));
      else if (typeof ev.data === 'string') this.term.write(ev.data);
    });
    ws.addEventListener('close', (ev: CloseEvent) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.closeBtn.disabled = true;
      let line: string;
      if (opened) {
        line = `console closed: ${closeReason(ev)}`;
      } else {
        const why = this.notRunning(name);
        line = why
          ? `could not open the console of ${name}: ${why}`
          : `could not open the console of ${name} (the API refused it; check your RBAC: you need get on virtualmachineinstances/console)`;
      }
      this.setStatus(line, opened ? 'closed' : 'error');
      this.term.write(`\r\n\x1b[2m[${line}]\x1b[0m\r\n`);
    });
  }

  /** Closes the console; `why` is the status to show, or null to leave it (another is opening). */
  close(why: string | null): void {
    const ws = this.ws;
    this.ws = null;
    this.closeBtn.disabled = true;
    if (ws) {
      ws.close(1000);
      if (why) this.term.write(`\r\n\x1b[2m[console closed: ${why}]\x1b[0m\r\n`);
    }
    if (why && ws) this.setStatus(`console closed: ${why}`, 'closed');
  }
}
