// The General MIDI synth in the page: spessasynth_lib's AudioWorklet synthesizer playing
// the SoundFont the local server serves at /soundfont, through a volume GainNode.
import { WorkletSynthesizer } from "spessasynth_lib";

export class Synth {
  constructor(onStatus) {
    this.onStatus = onStatus;
    this.ctx = null;
    this.synth = null;
    this.gain = null;
    this.volume = 0.7;
    this.loaded = false;
    this.layout = [];
  }

  get audioState() { return this.ctx ? this.ctx.state : "none"; }

  /** Create and resume the AudioContext (call from a click), then load the SoundFont. */
  async enable() {
    if (!this.ctx) {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      this.gain = this.ctx.createGain();
      this.gain.gain.value = this.volume;
      this.gain.connect(this.ctx.destination);
    }
    await this.ctx.resume();
    if (this.synth || this.loading) return;
    this.loading = true;
    try {
      this.onStatus("loading the SoundFont…");
      const r = await fetch("/soundfont");
      if (!r.ok) {
        let text = `no SoundFont (${r.status})`;
        try { text = (await r.json()).error || text; } catch { /* keep the status */ }
        this.onStatus(text, true);
        return;
      }
      const bank = await r.arrayBuffer();
      const mb = (bank.byteLength / 1048576).toFixed(0);
      await this.ctx.audioWorklet.addModule("/static/spessasynth_processor.min.js");
      const synth = new WorkletSynthesizer(this.ctx);
      synth.connect(this.gain);
      await synth.soundBankManager.addSoundBank(bank, "main");
      await synth.isReady;
      this.synth = synth;
      this.loaded = true;
      this.applyLayout(this.layout);
      this.onStatus(`sound on (${mb} MB SoundFont)`);
    } catch (e) {
      this.onStatus(`the synth could not start: ${e.message || e}`, true);
    } finally {
      this.loading = false;
    }
  }

  setVolume(v) {
    this.volume = v;
    if (this.gain) this.gain.gain.setTargetAtTime(v, this.ctx.currentTime, 0.01);
  }

  /** Programs and drum flags of the voices' channels (1-based in `voices`). */
  applyLayout(voices) {
    this.layout = voices;
    if (!this.synth) return;
    for (const v of voices) {
      const ch = v.channel - 1;
      this.synth.midiChannels[ch]?.setDrums(!!v.drum);
      this.synth.programChange(ch, v.program);
    }
  }

  noteOn(ch, pitch, vel) { this.synth?.noteOn(ch - 1, pitch, vel); }
  noteOff(ch, pitch) { this.synth?.noteOff(ch - 1, pitch); }
  panic() { this.synth?.stopAll(true); }
}
