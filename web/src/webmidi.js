// Web MIDI: note input from MIDI controllers and the model's notes out to MIDI outputs,
// where the browser offers it (feature-detected; a refusal is reported, the rest works).

export class WebMidi {
  constructor(onNote, onStatus) {
    this.onNote = onNote; // (pitch, vel) from any input
    this.onStatus = onStatus; // (text, isProblem)
    this.access = null;
    this.outputId = "";
  }

  static available() { return typeof navigator.requestMIDIAccess === "function"; }

  async start() {
    if (!WebMidi.available()) {
      this.onStatus("Web MIDI is not available in this browser: use the on-screen or " +
                    "computer keyboard (Chrome, Edge and Firefox offer Web MIDI)", true);
      return false;
    }
    try {
      this.access = await navigator.requestMIDIAccess({ sysex: false });
    } catch (e) {
      this.onStatus(`Web MIDI was refused (${e.message || e.name || e}): the on-screen and ` +
                    "computer keyboards still work", true);
      return false;
    }
    this.access.onstatechange = () => this.attach();
    this.attach();
    return true;
  }

  attach() {
    const names = [];
    for (const input of this.access.inputs.values()) {
      input.onmidimessage = (m) => this.message(m.data);
      names.push(input.name || input.id);
    }
    this.onStatus(names.length ? `MIDI in: ${names.join(", ")}` :
      "Web MIDI ready: no MIDI input connected", false);
  }

  outputs() { return this.access ? [...this.access.outputs.values()] : []; }

  message(data) {
    if (!data || data.length < 3) return;
    const kind = data[0] & 0xf0;
    if (kind === 0x90) this.onNote(data[1] & 0x7f, data[2] & 0x7f);
    else if (kind === 0x80) this.onNote(data[1] & 0x7f, 0);
  }

  /** Send a note to the chosen output (channel 1-based). */
  send(ch, pitch, vel) {
    if (!this.access || !this.outputId) return;
    const out = this.access.outputs.get(this.outputId);
    if (!out) return;
    const c = (ch - 1) & 0x0f;
    out.send(vel > 0 ? [0x90 | c, pitch, vel] : [0x80 | c, pitch, 0]);
  }

  program(ch, program) {
    const out = this.access?.outputs.get(this.outputId);
    out?.send([0xc0 | ((ch - 1) & 0x0f), program & 0x7f]);
  }

  allOff() {
    const out = this.access?.outputs.get(this.outputId);
    if (!out) return;
    for (let c = 0; c < 16; c++) out.send([0xb0 | c, 123, 0]);
  }
}
