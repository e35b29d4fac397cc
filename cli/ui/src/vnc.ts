// The VNC pane: noVNC's RFB on the vnc websocket of one VMI.
//
// The page opens the websocket itself and hands it to RFB (noVNC takes a URL
// or an open/opening WebSocket): that way it sees whether the socket ever
// opened and its close code and reason, which RFB's 'disconnect' event does
// not carry.

import RFB from '@novnc/novnc';
import { paths, STREAM_SUBPROTOCOL, wsURL } from './api';
import { closeReason } from './console';

export class VncPane {
  rfb: RFB | null = null;
  private name = '';

  constructor(
    private readonly target: HTMLElement,
    private readonly statusEl: HTMLElement,
    private readonly titleEl: HTMLElement,
    private readonly cadBtn: HTMLButtonElement,
    private readonly closeBtn: HTMLButtonElement,
    private readonly notRunning: (name: string) => string | null,
    private readonly changed: (rfb: RFB | null) => void,
  ) {
    this.cadBtn.addEventListener('click', () => {
      this.rfb?.sendCtrlAltDel();
      this.rfb?.focus({ preventScroll: true });
    });
    this.closeBtn.addEventListener('click', () => this.close('disconnected'));
    this.setStatus('no display open: press VNC on a running VM', 'idle');
  }

  private setStatus(text: string, state: 'idle' | 'connecting' | 'connected' | 'closed' | 'error'): void {
    this.statusEl.textContent = text;
    this.statusEl.dataset.state = state;
    this.target.dataset.state = state;
  }

  private set(rfb: RFB | null): void {
    this.rfb = rfb;
    this.changed(rfb);
  }

  /** The VMI whose display is open (or opening), or ''. */
  get current(): string {
    return this.rfb ? this.name : '';
  }

  /** Opens the display of VMI `name` in `ns`, closing any other. */
  open(ns: string, name: string): void {
    this.close(null);
    this.name = name;
    this.titleEl.textContent = name;
    this.setStatus(`connecting to ${name}…`, 'connecting');
    this.cadBtn.disabled = true;
    this.closeBtn.disabled = false;

    const ws = new WebSocket(wsURL(paths.subresource('virtualmachineinstances', ns, name, 'vnc')), [STREAM_SUBPROTOCOL]);
    ws.binaryType = 'arraybuffer';
    let opened = false;
    let closed: CloseEvent | null = null;
    // Registered before RFB's own handlers, so these run first.
    ws.addEventListener('open', () => (opened = true));
    ws.addEventListener('close', (ev) => (closed = ev));

    const rfb = new RFB(this.target, ws, { wsProtocols: [STREAM_SUBPROTOCOL] });
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.focusOnClick = true;
    rfb.viewOnly = false;
    rfb.background = '#0f1419';
    this.set(rfb);

    rfb.addEventListener('connect', () => {
      if (this.rfb !== rfb) return;
      this.setStatus('connected', 'connected');
      this.cadBtn.disabled = false;
    });
    rfb.addEventListener('disconnect', (e: Event) => {
      if (this.rfb !== rfb) return;
      this.set(null);
      this.cadBtn.disabled = true;
      this.closeBtn.disabled = true;
      if (!opened) {
        const why = this.notRunning(name);
        this.setStatus(
          why
            ? `could not open the VNC display of ${name}: ${why}`
            : `could not open the VNC display of ${name} (the API refused it; check your RBAC: you need get on virtualmachineinstances/vnc)`,
          'error',
        );
        return;
      }
      const clean = (e as CustomEvent<{ clean: boolean }>).detail?.clean;
      const why = closed ? closeReason(closed) : clean ? 'disconnected' : 'the connection was lost';
      this.setStatus(`VNC closed: ${why}`, clean ? 'closed' : 'error');
    });
    rfb.addEventListener('securityfailure', (e: Event) => {
      if (this.rfb !== rfb) return;
      const d = (e as CustomEvent<{ status: number; reason?: string }>).detail;
      this.setStatus(`VNC security failure: ${d?.reason || `status ${d?.status}`}`, 'error');
    });
    rfb.addEventListener('credentialsrequired', () => {
      if (this.rfb !== rfb) return;
      this.close(null);
      this.setStatus(`the VNC server of ${name} asks for credentials, which ironvirt's VNC does not use`, 'error');
    });
    rfb.addEventListener('desktopname', (e: Event) => {
      if (this.rfb !== rfb) return;
      const n = (e as CustomEvent<{ name: string }>).detail?.name;
      // The VM's name only; QEMU's desktop name (the libvirt domain) goes in the tooltip.
      this.titleEl.textContent = name;
      this.titleEl.title = n ?? '';
    });
  }

  /** Closes the display; `why` is the status to show, or null to leave it. */
  close(why: string | null): void {
    const rfb = this.rfb;
    if (!rfb) return;
    this.set(null);
    this.cadBtn.disabled = true;
    this.closeBtn.disabled = true;
    try {
      rfb.disconnect();
    } catch {
      // already disconnected
    }
    if (why) this.setStatus(`VNC closed: ${why}`, 'closed');
  }
}
