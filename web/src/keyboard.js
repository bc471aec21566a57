// Note input from the page: an on-screen keyboard (mouse and touch, through pointer
// events) and the computer keyboard (a piano layout on two rows, with octave shift).

/** Computer keys (KeyboardEvent.code, so any layout works) -> semitones above the base C. */
export const KEY_MAP = {
  KeyA: 0, KeyW: 1, KeyS: 2, KeyE: 3, KeyD: 4, KeyF: 5, KeyT: 6, KeyG: 7, KeyY: 8,
  KeyH: 9, KeyU: 10, KeyJ: 11, KeyK: 12, KeyO: 13, KeyL: 14, KeyP: 15, Semicolon: 16,
  Quote: 17,
};
export const OCTAVE_DOWN = "KeyZ", OCTAVE_UP = "KeyX", VEL_DOWN = "KeyC", VEL_UP = "KeyV";

const BLACK = [1, 3, 6, 8, 10];
const NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

export class Keyboard {
  /** `play(pitch, vel)` is called for every note-on and note-off (vel 0). */
  constructor(el, play, opts = {}) {
    this.el = el;
    this.play = play;
    this.low = opts.low ?? 48;
    this.octaves = opts.octaves ?? 3;
    this.base = 60; // the computer keyboard's C
    this.vel = 96;
    this.down = new Map(); // source -> pitch (pointer ids, key codes)
    this.keys = new Map(); // pitch -> element
    this.onShift = opts.onShift ?? (() => {});
    this.build();
  }

  build() {
    this.el.innerHTML = "";
    const whites = [];
    for (let p = this.low; p < this.low + 12 * this.octaves + 1; p++) {
      const k = document.createElement("div");
      const black = BLACK.includes(p % 12);
      k.className = black ? "key black" : "key white";
      k.dataset.pitch = String(p);
      k.title = NAMES[p % 12] + (Math.floor(p / 12) - 1);
      if (!black) whites.push(k);
      this.keys.set(p, k);
      this.el.appendChild(k);
    }
    const n = whites.length;
    let wi = 0;
    for (const [p, k] of this.keys) {
      if (BLACK.includes(p % 12)) {
        k.style.left = `calc(${(wi / n) * 100}% - ${(0.3 / n) * 100}%)`;
        k.style.width = `${(0.6 / n) * 100}%`;
      } else {
        k.style.left = `${(wi / n) * 100}%`;
        k.style.width = `${(1 / n) * 100}%`;
        wi++;
      }
    }
    this.el.addEventListener("pointerdown", (e) => this.pointer(e, true));
    this.el.addEventListener("pointerup", (e) => this.pointer(e, false));
    this.el.addEventListener("pointercancel", (e) => this.pointer(e, false));
    this.el.addEventListener("pointerleave", (e) => this.pointer(e, false));
    this.el.addEventListener("pointerover", (e) => { if (e.buttons) this.pointer(e, true); });
    this.el.addEventListener("pointerout", (e) => { if (e.buttons) this.pointer(e, false); });
    this.el.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  pointer(e, on) {
    const k = e.target.closest?.(".key");
    const src = `p${e.pointerId}`;
    if (on && k) {
      e.preventDefault();
      this.el.releasePointerCapture?.(e.pointerId);
      this.press(src, Number(k.dataset.pitch));
    } else if (!on) {
      this.release(src);
    }
  }

  press(src, pitch) {
    if (this.down.get(src) === pitch) return;
    this.release(src);
    this.down.set(src, pitch);
    this.keys.get(pitch)?.classList.add("down");
    this.play(pitch, this.vel);
  }

  release(src) {
    const pitch = this.down.get(src);
    if (pitch === undefined) return;
    this.down.delete(src);
    if (![...this.down.values()].includes(pitch)) this.keys.get(pitch)?.classList.remove("down");
    this.play(pitch, 0);
  }

  /** Show a note played elsewhere (Web MIDI) on the keys. */
  mark(pitch, on) { this.keys.get(pitch)?.classList.toggle("down", on); }

  /** Computer keyboard handlers (attach to window). Returns true when the key was used. */
  keydown(e) {
    if (e.repeat || e.ctrlKey || e.metaKey || e.altKey) return false;
    if (e.code === OCTAVE_DOWN || e.code === OCTAVE_UP) {
      this.base = Math.min(108, Math.max(12, this.base + (e.code === OCTAVE_UP ? 12 : -12)));
      this.onShift(this.base, this.vel);
      return true;
    }
    if (e.code === VEL_DOWN || e.code === VEL_UP) {
      this.vel = Math.min(127, Math.max(1, this.vel + (e.code === VEL_UP ? 16 : -16)));
      this.onShift(this.base, this.vel);
      return true;
    }
    const off = KEY_MAP[e.code];
    if (off === undefined) return false;
    const pitch = this.base + off;
    if (pitch > 127) return false;
    this.press(`k${e.code}`, pitch);
    return true;
  }

  keyup(e) {
    if (KEY_MAP[e.code] === undefined) return false;
    this.release(`k${e.code}`);
    return true;
  }

  releaseAll() { for (const src of [...this.down.keys()]) this.release(src); }
}
