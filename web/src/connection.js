// The WebSocket client of the protocol in docs/web.md: JSON messages; the page decides
// whether to open it again after a loss (main.js).
export const PROTOCOL_VERSION = 1;

export class Connection {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers; // {message(msg), open(), close(reason)}
    this.ws = null;
    this.nextId = 1;
    this.closedByServer = false;
  }

  open() {
    this.closedByServer = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.send({ type: "hello", version: PROTOCOL_VERSION });
      this.handlers.open?.();
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === "closing") this.closedByServer = true;
      if (msg.type === "error" && msg.message.includes("sessions are open")) this.closedByServer = true;
      this.handlers.message(msg);
    };
    ws.onclose = (ev) => this.handlers.close?.(ev.reason || `connection closed (${ev.code})`);
  }

  get ready() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN; }

  send(msg) {
    if (!this.ready) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** A played note; returns its id (answers name it in "reply"). */
  note(pitch, vel) {
    const id = this.nextId++;
    this.send({ type: "note", pitch, vel, id });
    return id;
  }

  close() { this.ws?.close(1000, "page closed"); }
}
