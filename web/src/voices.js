// The model's voices panel: preset, per-channel mode / instrument / range / source, the
// steering controls and the global switches, as in `notochord-rt play`.
import { instColour } from "./roll.js";

const MODES = ["auto", "input", "follow", "mute"];
const LABELS = {
  steer_pitch: "pitch", steer_density: "density", steer_rate: "rate",
  steer_velocity: "velocity", pitch_temp: "pitch temp", rhythm_temp: "rhythm temp",
  timing_temp: "timing temp",
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

export class VoicesPanel {
  constructor(root, send) {
    this.root = root;
    this.send = send;
    this.instruments = [];
    this.presets = [];
    this.rig = null;
  }

  welcome(msg) {
    this.instruments = msg.instruments;
    this.presets = msg.presets;
    this.update(msg.rig);
  }

  instSelect(value, onchange) {
    const s = el("select", { class: "inst", on: { change: () => onchange(Number(s.value)) } });
    for (const g of this.instruments) {
      const og = el("optgroup", { label: g.group });
      for (const [id, name] of g.insts) og.append(el("option", { value: id }, `${id} ${name}`));
      s.append(og);
    }
    s.value = String(value);
    return s;
  }

  update(rig) {
    this.rig = rig;
    const r = this.root;
    r.innerHTML = "";
    const preset = el("select", { id: "preset", on: { change: () => this.send({ type: "preset", name: preset.value }) } });
    for (const p of this.presets) preset.append(el("option", { value: p.name, title: p.description }, p.name));
    if (rig.preset) preset.value = rig.preset;
    const desc = this.presets.find((p) => p.name === rig.preset)?.description ?? "";
    r.append(el("div", { class: "row" }, el("label", {}, "preset ", preset), el("span", { class: "desc" }, desc)));

    const table = el("table", { class: "voices" });
    table.append(el("tr", {}, ...["ch", "mode", "instrument", "range", "source"].map((h) => el("th", {}, h))));
    const used = new Set(rig.voices.map((v) => v.channel));
    for (const v of rig.voices) {
      const mode = el("select", { class: "mode", "data-channel": v.channel, on: { change: () => this.send({ type: "voice", channel: v.channel, mode: mode.value }) } });
      for (const m of MODES) mode.append(el("option", { value: m }, m));
      mode.value = v.mode;
      const lo = el("input", { type: "number", min: 0, max: 127, value: v.range[0], class: "lo" });
      const hi = el("input", { type: "number", min: 0, max: 127, value: v.range[1], class: "hi" });
      const range = () => this.send({ type: "voice", channel: v.channel, range: [Number(lo.value), Number(hi.value)] });
      lo.addEventListener("change", range);
      hi.addEventListener("change", range);
      const src = el("select", { class: "source", on: { change: () => this.send({ type: "voice", channel: v.channel, source: Number(src.value) }) } });
      src.append(el("option", { value: "" }, "–"));
      for (const o of rig.voices) if (o.channel !== v.channel) src.append(el("option", { value: o.channel }, String(o.channel)));
      src.value = v.source ? String(v.source) : "";
      const swatch = el("span", { class: "swatch", "data-inst": v.inst });
      swatch.style.background = instColour(v.inst);
      table.append(el("tr", { class: `voice ${v.mode}`, "data-channel": v.channel },
        el("td", {}, swatch, String(v.channel)), el("td", {}, mode),
        el("td", {}, this.instSelect(v.inst, (inst) => this.send({ type: "voice", channel: v.channel, inst }))),
        el("td", {}, lo, "–", hi), el("td", {}, src)));
    }
    const add = el("select", { id: "add-voice", on: { change: () => { if (add.value) this.send({ type: "voice", channel: Number(add.value), mode: "auto" }); } } });
    add.append(el("option", { value: "" }, "add a voice on channel…"));
    for (let c = 1; c <= 16; c++) if (!used.has(c)) add.append(el("option", { value: c }, String(c)));
    r.append(table, el("div", { class: "row" }, add));

    const steer = el("div", { class: "controls" });
    for (const [name, c] of Object.entries(rig.controls)) {
      const out = el("output", {}, c.value.toFixed(2));
      const s = el("input", { type: "range", min: c.lo, max: c.hi, step: (c.hi - c.lo) / 100, value: c.value, "data-control": name });
      s.addEventListener("input", () => { out.textContent = Number(s.value).toFixed(2); });
      s.addEventListener("change", () => this.send({ type: "control", name, value: Number(s.value) }));
      steer.append(el("label", { class: "control" }, el("span", {}, LABELS[name] ?? name), s, out));
    }
    const mute = el("button", { on: { click: () => this.send({ type: "action", name: "mute" }) }, class: rig.muted ? "on" : "" }, rig.muted ? "unmute model" : "mute model");
    const stop = el("button", { on: { click: () => this.send({ type: "action", name: "stop" }) }, class: rig.stopped ? "on" : "" }, rig.stopped ? "start auto voices" : "stop auto voices");
    r.append(steer, el("div", { class: "row" }, mute, stop));
  }

  /** The channel the person's notes sound on (the first input voice), or null. */
  inputVoice() { return this.rig?.voices.find((v) => v.mode === "input") ?? null; }
}
