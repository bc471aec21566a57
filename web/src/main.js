// The notochord-rt web playground: wires the connection, the synth, the keyboards, Web
// MIDI, the voices panel and the piano roll. `window.nrt` exposes the parts (tests and
// the benchmark read it).
import { Connection } from "./connection.js";
import { Keyboard, KEY_MAP } from "./keyboard.js";
import { PianoRoll, instColour } from "./roll.js";
import { Synth } from "./synth.js";
import { VoicesPanel } from "./voices.js";
import { WebMidi } from "./webmidi.js";

const $ = (id) => document.getElementById(id);
const MAX_PROMPT = 256 * 1024;

const nrt = {
  stats: { sent: 0, modelOn: 0, modelOff: 0, panics: 0, errors: [] },
  latencies: [], // ms from a key press to the first answer arriving (performance.now())
  pressed: new Map(), // note id -> performance.now() of the press
  log: [],
};
window.nrt = nrt;

function say(text, problem = false) {
  const line = document.createElement("div");
  line.textContent = text;
  if (problem) line.className = "problem";
  const box = $("log");
  box.prepend(line);
  while (box.childElementCount > 60) box.lastChild.remove();
  nrt.log.push(text);
}

const synth = new Synth((text, problem) => {
  $("audio-status").textContent = text;
  $("audio-status").className = problem ? "problem" : "";
  if (problem) say(text, true);
});
const roll = new PianoRoll($("roll"));
const panel = new VoicesPanel($("voices"), (msg) => conn.send(msg));
const midi = new WebMidi((pitch, vel) => play(pitch, vel, "midi"), (text, problem) => {
  $("midi-status").textContent = text;
  $("midi-status").className = problem ? "problem" : "";
});
const kb = new Keyboard($("keyboard"), (pitch, vel) => play(pitch, vel, "keys"), {
  onShift: (base, vel) => { $("octave").textContent = `keys from ${noteName(base)}, velocity ${vel}`; },
});
Object.assign(nrt, { synth, roll, panel, midi, kb, instColour });

function noteName(p) {
  return ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"][p % 12] + (Math.floor(p / 12) - 1);
}

/** A note the person played (any source): sound it, draw it, send it. */
function play(pitch, vel, source) {
  const v = panel.inputVoice();
  if (!v) {
    if (vel > 0) say("no voice is in input mode: set a channel's mode to input to play", true);
    return;
  }
  if (source === "midi") kb.mark(pitch, vel > 0);
  if (vel > 0) {
    synth.noteOn(v.channel, pitch, vel);
    roll.on(v.channel, v.inst, pitch, true);
  } else {
    synth.noteOff(v.channel, pitch);
    roll.off(v.channel, pitch, true);
  }
  const id = conn.note(pitch, vel);
  nrt.stats.sent++;
  if (vel > 0) nrt.pressed.set(id, performance.now());
}

function onNote(m) {
  if (m.vel > 0) {
    nrt.stats.modelOn++;
    synth.noteOn(m.ch, m.pitch, m.vel);
    roll.on(m.ch, m.inst, m.pitch, false);
    if (m.reply !== undefined && nrt.pressed.has(m.reply)) {
      const ms = performance.now() - nrt.pressed.get(m.reply);
      nrt.latencies.push(ms);
      nrt.pressed.delete(m.reply);
      window.dispatchEvent(new CustomEvent("nrt-answer", { detail: ms }));
    }
  } else {
    nrt.stats.modelOff++;
    synth.noteOff(m.ch, m.pitch);
    roll.off(m.ch, m.pitch, false);
  }
  midi.send(m.ch, m.pitch, m.vel);
}

function download(name, b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "audio/midi" }));
  const a = document.createElement("a");
  a.href = url; a.download = name;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function handle(m) {
  switch (m.type) {
    case "note": onNote(m); break;
    case "welcome":
      nrt.session = m.session;
      panel.welcome(m);
      synth.applyLayout(m.rig.voices);
      $("conn").textContent = `connected (protocol ${m.version})`;
      break;
    case "rig": panel.update(m); synth.applyLayout(m.voices); programsOut(m.voices); break;
    case "prompted":
      panel.update(m.rig); synth.applyLayout(m.rig.voices);
      for (const n of m.notes) say(n);
      break;
    case "panic":
      nrt.stats.panics++;
      roll.releaseAll(true);
      synth.panic();
      midi.allOff();
      break;
    case "reset": say("reset: every note released"); break;
    case "recording":
      $("record").classList.toggle("on", m.on);
      $("record").textContent = m.on ? "■ stop recording" : "● record";
      say(m.on ? "recording…" : `recorded ${m.events} events`);
      break;
    case "midi": download(m.name, m.data); say(`downloaded ${m.events} events`); break;
    case "prompting": say(`reading ${m.name}…`); break;
    case "error": nrt.stats.errors.push(m.message); say(m.message, true); break;
    case "log": say(m.message); break;
    case "closing": say(`the server closed this session (${m.reason}): reload to play again`, true); break;
    default: break;
  }
}

function programsOut(voices) { for (const v of voices) midi.program(v.channel, v.program); }

let leaving = false;
const proto = location.protocol === "https:" ? "wss:" : "ws:";
const conn = new Connection(`${proto}//${location.host}/ws`, {
  message: handle,
  close: (reason) => {
    $("conn").textContent = `disconnected: ${reason}`;
    roll.releaseAll(false);
    synth.panic();
    midi.allOff();
    // a lost connection is tried again (a new session); a session the server closed or
    // refused is not
    if (!conn.closedByServer && !leaving) {
      $("conn").textContent += " · reconnecting…";
      setTimeout(() => conn.open(), 2000);
    }
  },
});
nrt.conn = conn;
conn.open();

// -- controls --------------------------------------------------------------------------------
$("enable-audio").addEventListener("click", async () => {
  await synth.enable();
  if (synth.audioState === "running") $("enable-audio").classList.add("done");
});
$("volume").addEventListener("input", (e) => synth.setVolume(Number(e.target.value)));
$("panic").addEventListener("click", () => {
  kb.releaseAll();
  conn.send({ type: "action", name: "panic" });
  synth.panic();
});
$("reset").addEventListener("click", () => conn.send({ type: "action", name: "reset" }));
$("record").addEventListener("click", () => conn.send({ type: "record", on: !$("record").classList.contains("on") }));
$("download").addEventListener("click", () => conn.send({ type: "export" }));
$("prompt").addEventListener("change", async (e) => {
  const f = e.target.files[0];
  e.target.value = "";
  if (!f) return;
  if (f.size > MAX_PROMPT) { say(`${f.name} is larger than ${MAX_PROMPT / 1024} KiB`, true); return; }
  const buf = new Uint8Array(await f.arrayBuffer());
  let bin = "";
  for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode(...buf.subarray(i, i + 0x8000));
  conn.send({ type: "prompt", name: f.name.slice(0, 200), data: btoa(bin) });
});
$("midi-out").addEventListener("change", (e) => { midi.outputId = e.target.value; });

// After a choice in a menu or on a slider the computer keys play notes again (a focused
// menu would take letters as a search).
document.addEventListener("change", (e) => {
  if (e.target.tagName === "SELECT" || e.target.type === "range") e.target.blur();
});
window.addEventListener("keydown", (e) => {
  if (e.target.closest?.("input, select, textarea")) return;
  if (e.code === "Escape") { $("panic").click(); return; }
  if (kb.keydown(e)) e.preventDefault();
});
window.addEventListener("keyup", (e) => { if (kb.keyup(e)) e.preventDefault(); });
window.addEventListener("blur", () => kb.releaseAll());
window.addEventListener("pagehide", () => { leaving = true; kb.releaseAll(); conn.close(); });

// Audio: try at once (allowed where the page was opened by a gesture or by policy); else
// the "click to enable audio" button stays.
(async () => {
  const probe = new AudioContext();
  const running = probe.state === "running";
  await probe.close();
  if (running) {
    await synth.enable();
    if (synth.audioState === "running") $("enable-audio").classList.add("done");
  }
})();

midi.start().then((ok) => {
  if (!ok) return;
  const sel = $("midi-out");
  const fill = () => {
    sel.innerHTML = "<option value=''>none</option>";
    for (const o of midi.outputs()) {
      const opt = document.createElement("option");
      opt.value = o.id; opt.textContent = o.name || o.id;
      sel.append(opt);
    }
    sel.value = midi.outputId;
  };
  fill();
  midi.access.addEventListener?.("statechange", fill);
});

$("keymap").textContent = Object.entries(KEY_MAP)
  .map(([code, off]) => `${code.replace("Key", "")}=${["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"][off % 12]}${off >= 12 ? "'" : ""}`)
  .join(" ") + " · Z/X octave down/up · C/V softer/louder · Esc panic";
