// A scrolling piano roll on a canvas: time runs right to left, pitch bottom to top,
// each instrument in its own colour; the person's notes are outlined.
const SECONDS = 8;

export function instColour(inst) {
  const hue = (inst * 47 + 20) % 360;
  return `hsl(${hue.toFixed(0)}, 70%, 58%)`;
}

export class PianoRoll {
  constructor(canvas) {
    this.canvas = canvas;
    this.notes = []; // {inst, pitch, ch, start, end|null, mine}
    this.open = new Map(); // "ch:pitch" -> note
    this.drawn = 0; // notes drawn in the last frame (tests read it)
    this.dirty = true; // something changed since the last frame
    this.frame = this.frame.bind(this);
    requestAnimationFrame(this.frame);
  }

  on(ch, inst, pitch, mine) {
    const now = performance.now() / 1000;
    const key = `${mine ? "me" : ch}:${pitch}`;
    const old = this.open.get(key);
    if (old) old.end = now;
    this.dirty = true;
    const n = { inst, pitch, ch, start: now, end: null, mine };
    this.notes.push(n);
    this.open.set(key, n);
    if (this.notes.length > 4000) this.notes.splice(0, this.notes.length - 4000);
  }

  off(ch, pitch, mine) {
    const key = `${mine ? "me" : ch}:${pitch}`;
    const n = this.open.get(key);
    if (n) { n.end = performance.now() / 1000; this.open.delete(key); this.dirty = true; }
  }

  /** End every open note of the model (panic, reset) or all of them. */
  releaseAll(model_only) {
    const now = performance.now() / 1000;
    for (const [key, n] of this.open) {
      if (model_only && n.mine) continue;
      n.end = now;
      this.open.delete(key);
    }
    this.dirty = true;
  }

  get sounding() { return [...this.open.values()]; }

  frame() {
    requestAnimationFrame(this.frame);
    // nothing moves on an empty roll: skip the frame (an idle tab costs no CPU)
    if (!this.dirty && this.drawn === 0 && this.canvas.width === Math.round(this.canvas.clientWidth * (window.devicePixelRatio || 1))) return;
    this.dirty = false;
    const c = this.canvas, g = c.getContext("2d");
    const w = c.clientWidth, h = c.clientHeight, dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = "#14161b"; g.fillRect(0, 0, w, h);
    const lo = 21, hi = 108, rowH = h / (hi - lo + 1);
    g.fillStyle = "#1b1e25";
    for (let p = lo; p <= hi; p++) {
      if ([1, 3, 6, 8, 10].includes(p % 12)) g.fillRect(0, h - (p - lo + 1) * rowH, w, rowH);
    }
    const now = performance.now() / 1000, pxs = w / SECONDS;
    let drawn = 0;
    for (const n of this.notes) {
      const end = n.end ?? now;
      if (now - end > SECONDS) continue;
      const x0 = w - (now - n.start) * pxs, x1 = w - (now - end) * pxs;
      const p = Math.min(hi, Math.max(lo, n.pitch));
      const y = h - (p - lo + 1) * rowH;
      g.fillStyle = instColour(n.inst);
      g.fillRect(x0, y - 0.5, Math.max(2, x1 - x0), Math.max(3, rowH));
      if (n.mine) { g.strokeStyle = "#fff"; g.strokeRect(x0, y - 0.5, Math.max(2, x1 - x0), Math.max(3, rowH)); }
      drawn++;
    }
    this.drawn = drawn;
  }
}
