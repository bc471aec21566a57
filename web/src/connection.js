// The WebSocket client of the protocol in docs/web.md: JSON messages; the page decides
// whether to open it again after a loss (main.js). It asks for batches: a busy server may
// then pack the messages waiting for the page into one frame (a JSON array, in order).
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
      this.send({ type: "hello", version: PROTOCOL_VERSION, batch: true });
      this.handlers.open?.();
    };
    ws.onmessage = (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      for (const msg of Array.isArray(data) ? data : [data]) this.receive(msg);
    };
    ws.onclose = (ev) => this.handlers.close?.(ev.reason || `connection closed (${ev.code})`);
  }

  receive(msg) {
    if (msg.type === "closing") this.closedByServer = true;
    if (msg.type === "error" && msg.message.includes("sessions are open")) this.closedByServer = true;
    this.handlers.message(msg);
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
