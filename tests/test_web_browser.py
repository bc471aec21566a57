"""The page in a real browser: Debian's chromium driven by Playwright (pytest-playwright's
fixtures, the browser launched by ``executable_path``), against the real server and the
bundled default model.

The page loads, its audio context runs and the SoundFont synth starts, on-screen and
computer keys send notes, the model's answers arrive, are drawn on the piano roll and are
released; panic and closing the tab release every model note; a recorded session
downloads as a valid MIDI file; a simulated Web MIDI input drives the same path (and a
Web MIDI output receives the model's notes); without Web MIDI the page says so.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("playwright")

from notochord_rt.apps.web.serve import ServerThread, make_web_app  # noqa: E402
from notochord_rt.apps.web.soundfont import HOW_TO_GET, find_soundfont  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI") == "true":  # CI installs it (scripts/apt-packages.txt)
        raise RuntimeError("chromium is missing: bash scripts/setup.sh --dev installs it")
    pytest.skip("Debian's chromium is not installed (apt install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--autoplay-policy=no-user-gesture-required", "--no-sandbox",
                     "--mute-audio"]}


@pytest.fixture(scope="module")
def base_model():
    from notochord_rt.apps.loading import load_sampler

    return load_sampler("default", "module")


@pytest.fixture(scope="module")
def server(base_model) -> Iterator[ServerThread]:
    web = make_web_app(base_model, soundfont=find_soundfont(), preset="follows", rate=2000)
    with ServerThread(web) as srv:
        yield srv


@pytest.fixture(scope="module")
def bare_server(base_model) -> Iterator[ServerThread]:
    """No SoundFont: the page must say how to get one."""
    web = make_web_app(base_model, soundfont=None, preset="follows", rate=2000)
    with ServerThread(web) as srv:
        yield srv


def wait_js(page, expr: str, timeout: float = 15.0):
    """Poll a JavaScript expression until it is truthy (the page's CSP forbids the
    string evaluation Playwright's wait_for_function uses)."""
    end = time.monotonic() + timeout
    while True:
        value = page.evaluate(f"() => ({expr})")
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {expr}; log: "
                                 f"{page.evaluate('() => window.nrt && nrt.log')}")
        time.sleep(0.02)


def open_page(page, srv: ServerThread, preset: str | None = None):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(srv.url + "/")
    wait_js(page, "window.nrt && nrt.session && nrt.panel.rig")
    if preset:
        page.select_option("#preset", preset)
        wait_js(page, f"nrt.panel.rig.preset === {preset!r}")
    page.errors = errors
    return page


def press(page, pitch: int, hold: float = 0.3) -> None:
    box = page.locator(f'.key[data-pitch="{pitch}"]').bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.8)
    page.mouse.down()
    time.sleep(hold)
    page.mouse.up()


MODEL_SOUNDING = "nrt.roll.sounding.filter(n => !n.mine).length"


def test_page_sound_keys_answers_roll_and_release(page, server) -> None:
    open_page(page, server)
    assert wait_js(page, "nrt.synth.audioState") == "running"  # autoplay allowed: no click
    if server.web.soundfont is not None:
        wait_js(page, "nrt.synth.loaded", 60)
        assert "sound on" in page.locator("#audio-status").inner_text()
        # the voices' GM programs reached the synth: vibraphone 11, marimba 12, bass 32
        wait_js(page, "[1, 2, 3].map(c => nrt.synth.synth.midiChannels[c]?.patch?.program)"
                      ".join() === '11,12,32'")
    assert not page.locator("#enable-audio").is_visible()
    before = page.evaluate("() => nrt.stats.modelOn")
    press(page, 60, hold=0.4)
    wait_js(page, "nrt.latencies.length >= 1")
    wait_js(page, f"nrt.stats.modelOn >= {before + 3}")  # three follow voices answer
    answers = page.evaluate("() => nrt.roll.notes.filter(n => !n.mine).map(n => n.inst)")
    assert {12, 13, 33} <= set(answers)  # vibraphone, marimba, acoustic bass (preset)
    # drawn: each answering instrument's colour is on the canvas
    counts = page.evaluate("""() => {
        const c = nrt.roll.canvas, g = c.getContext('2d');
        const px = g.getImageData(0, 0, c.width, c.height).data;
        const probe = document.createElement('canvas').getContext('2d');
        const out = {};
        for (const inst of [1, 12, 13, 33]) {
          probe.fillStyle = nrt.instColour(inst); probe.fillRect(0, 0, 1, 1);
          const [r, g2, b] = probe.getImageData(0, 0, 1, 1).data;
          let n = 0;
          for (let i = 0; i < px.length; i += 4)
            if (px[i] === r && px[i + 1] === g2 && px[i + 2] === b) n++;
          out[inst] = n;
        }
        return out;
    }""")
    assert all(counts[k] > 0 for k in ("12", "13", "33")), counts
    # released: the key is up, so its answers ended
    wait_js(page, f"{MODEL_SOUNDING} === 0 && nrt.stats.modelOff >= nrt.stats.modelOn")
    assert page.evaluate("() => nrt.stats.errors") == []
    assert page.errors == []


def test_computer_keyboard_and_octave_shift(page, server) -> None:
    open_page(page, server)
    page.locator("#roll").click()  # focus the page, not a form field
    page.keyboard.down("a")
    wait_js(page, "nrt.latencies.length >= 1")
    page.keyboard.up("a")
    page.keyboard.press("x")  # octave up
    page.keyboard.down("d")  # E of the next octave
    wait_js(page, "nrt.latencies.length >= 2")
    page.keyboard.up("d")
    mine = page.evaluate("() => nrt.roll.notes.filter(n => n.mine).map(n => n.pitch)")
    assert mine == [60, 76]
    wait_js(page, f"{MODEL_SOUNDING} === 0")
    assert "E5" in page.locator("#octave").inner_text() or \
        "C5" in page.locator("#octave").inner_text()


def test_panic_and_tab_close_release_every_model_note(page, server) -> None:
    open_page(page, server, "band")
    for name in ("steer_rate", "steer_density"):
        page.evaluate(f"() => nrt.conn.send({{type: 'control', name: '{name}', value: 1}})")
    wait_js(page, f"{MODEL_SOUNDING} > 0")  # the band plays on its own
    sess = server.web.manager.sessions[page.evaluate("() => nrt.session")]
    page.click("#panic")
    wait_js(page, "nrt.stats.panics >= 1")
    page.close()
    end = time.monotonic() + 10
    while sess.player.running and time.monotonic() < end:
        time.sleep(0.02)
    assert sess.closed and not sess.player.running
    assert sess.sink.sounding == set() and sess.player.sounding() == set()


def test_recorded_session_downloads_as_midi(page, server, tmp_path: Path) -> None:
    from notochord_rt.midi.ingest import load_midi

    open_page(page, server)
    page.click("#record")
    wait_js(page, "document.getElementById('record').classList.contains('on')")
    press(page, 60)
    press(page, 64)
    wait_js(page, f"nrt.latencies.length >= 2 && {MODEL_SOUNDING} === 0")
    page.click("#record")
    wait_js(page, "!document.getElementById('record').classList.contains('on')")
    with page.expect_download() as dl:
        page.click("#download")
    path = tmp_path / "session.mid"
    dl.value.save_as(path)
    assert dl.value.suggested_filename.endswith(".mid")
    e = load_midi(path).events
    ons = [(int(i), int(p)) for i, p, v in zip(e.inst, e.pitch, e.vel) if v > 0]
    assert (1, 60) in ons and (1, 64) in ons  # the piano played
    assert {12, 13, 33} <= {i for i, _ in ons}  # and the answers


FAKE_MIDI = """
(() => {
  const listeners = [];
  const input = { id: 'fake-in', name: 'Fake Keys', type: 'input', onmidimessage: null };
  const sent = [];
  const output = { id: 'fake-out', name: 'Fake Synth', type: 'output',
                   send: (data) => sent.push(Array.from(data)) };
  const access = {
    inputs: new Map([[input.id, input]]), outputs: new Map([[output.id, output]]),
    onstatechange: null, addEventListener: (t, f) => listeners.push(f),
  };
  window.__fakeMidi = {
    play: (bytes) => input.onmidimessage && input.onmidimessage({ data: new Uint8Array(bytes) }),
    sent,
  };
  Object.defineProperty(Navigator.prototype, 'requestMIDIAccess', {
    configurable: true, value: () => Promise.resolve(access) });
})();
"""


def test_simulated_web_midi_input_and_output(page, server) -> None:
    page.add_init_script(FAKE_MIDI)
    open_page(page, server)
    wait_js(page, "document.getElementById('midi-status').textContent.includes('Fake Keys')")
    page.select_option("#midi-out", "fake-out")
    page.evaluate("() => __fakeMidi.play([0x90, 67, 100])")
    wait_js(page, "nrt.latencies.length >= 1")
    assert page.locator('.key[data-pitch="67"]').get_attribute("class").endswith("down")
    wait_js(page, "__fakeMidi.sent.filter(m => (m[0] & 0xf0) === 0x90).length >= 3")
    page.evaluate("() => __fakeMidi.play([0x80, 67, 0])")
    wait_js(page, f"{MODEL_SOUNDING} === 0")
    sent = page.evaluate("() => __fakeMidi.sent")
    ons = [m for m in sent if m[0] & 0xF0 == 0x90]
    offs = [m for m in sent if m[0] & 0xF0 == 0x80]
    assert {m[0] & 0x0F for m in ons} == {1, 2, 3}  # channels 2-4: the follow voices
    assert sorted((m[0] & 0x0F, m[1]) for m in ons) == sorted((m[0] & 0x0F, m[1]) for m in offs)
    mine = page.evaluate("() => nrt.roll.notes.filter(n => n.mine).map(n => n.pitch)")
    assert mine == [67]


def test_without_web_midi_the_page_says_so(page, server) -> None:
    page.add_init_script("delete Navigator.prototype.requestMIDIAccess;")
    open_page(page, server)
    status = wait_js(page, "document.getElementById('midi-status').textContent.includes"
                           "('not available') && document.getElementById('midi-status')"
                           ".textContent")
    assert "on-screen or computer keyboard" in status
    press(page, 62)  # the rest works
    wait_js(page, "nrt.latencies.length >= 1")


def test_without_a_soundfont_the_page_says_how_to_get_one(page, bare_server) -> None:
    open_page(page, bare_server)
    wait_js(page, "document.getElementById('audio-status').textContent.includes('apt')")
    assert page.locator("#audio-status").inner_text() == HOW_TO_GET
    press(page, 60)  # playing still works, silently
    wait_js(page, "nrt.latencies.length >= 1")


def test_click_to_enable_audio_where_the_browser_requires_it(playwright, server) -> None:
    """Without the autoplay flag the audio context starts suspended: the page shows the
    button, and a click starts the sound."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--mute-audio"])
    try:
        page = browser.new_page()
        open_page(page, server)
        button = page.locator("#enable-audio")
        assert button.is_visible()
        assert page.evaluate("() => nrt.synth.audioState") in ("none", "suspended")
        button.click()
        assert wait_js(page, "nrt.synth.audioState === 'running' && nrt.synth.audioState")
        if server.web.soundfont is not None:
            wait_js(page, "nrt.synth.loaded", 60)
        assert not button.is_visible()
    finally:
        browser.close()


def test_touch_on_the_on_screen_keyboard(browser, server) -> None:
    context = browser.new_context(has_touch=True)
    try:
        page = context.new_page()
        open_page(page, server)
        box = page.locator('.key[data-pitch="65"]').bounding_box()
        page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.8)
        wait_js(page, "nrt.latencies.length >= 1")
        wait_js(page, f"{MODEL_SOUNDING} === 0")  # the tap's note ended, and its answers
        assert page.evaluate("() => nrt.roll.notes.filter(n => n.mine).map(n => n.pitch)") == [65]
    finally:
        context.close()


def test_a_midi_file_loaded_in_the_page_becomes_the_prompt(page, server, tmp_path) -> None:
    from midifiles import simple_song

    song = tmp_path / "song.mid"
    song.write_bytes(simple_song())
    open_page(page, server)
    page.set_input_files("#prompt", str(song))
    wait_js(page, "nrt.log.some(t => t.startsWith('prompt: '))")
    insts = page.evaluate("() => nrt.panel.rig.voices.map(v => v.inst)")
    assert 34 in insts  # the song's fingered bass is a voice now
    too_big = tmp_path / "big.mid"
    too_big.write_bytes(b"MThd" + bytes(300 * 1024))
    page.set_input_files("#prompt", str(too_big))
    wait_js(page, "nrt.log.some(t => t.includes('larger than'))")


def test_voice_controls_in_the_page_change_the_sessions_voices(page, server) -> None:
    open_page(page, server)
    sess = server.web.manager.sessions[page.evaluate("() => nrt.session")]
    page.select_option('select.mode[data-channel="2"]', "auto")
    wait_js(page, "nrt.panel.rig.voices.find(v => v.channel === 2).mode === 'auto'")
    page.select_option('tr[data-channel="3"] select.inst', "41")  # violin
    wait_js(page, "nrt.panel.rig.voices.find(v => v.channel === 3).inst === 41")
    lo = page.locator('tr[data-channel="4"] input.lo')
    lo.fill("40")
    lo.dispatch_event("change")
    wait_js(page, "nrt.panel.rig.voices.find(v => v.channel === 4).range[0] === 40")
    page.locator('input[data-control="steer_pitch"]').fill("0.8")
    page.locator('input[data-control="steer_pitch"]').dispatch_event("change")
    end = time.monotonic() + 10
    while sess.policy.view.values.get("steer_pitch") != pytest.approx(0.8):
        assert time.monotonic() < end, "the control never reached the policy"
        time.sleep(0.02)
    def voices_arrived() -> bool:  # the player's own copy of the voices (its thread)
        v = sess.policy.rig.voices
        return (1 in v and v[1].mode == "auto" and 2 in v and v[2].inst == 41
                and 3 in v and v[3].range == (40, 60))

    end = time.monotonic() + 10  # voices and controls travel separately: wait for both
    while not voices_arrived():
        assert time.monotonic() < end, sess.policy.rig.voices
        time.sleep(0.02)
    page.locator("#volume").fill("0.2")
    assert page.evaluate("() => nrt.synth.volume") == pytest.approx(0.2)


def test_a_lost_connection_is_opened_again(page, server) -> None:
    open_page(page, server)
    first = page.evaluate("() => nrt.session")
    page.evaluate("() => nrt.conn.ws.close()")  # as a dropped connection
    wait_js(page, f"nrt.session && nrt.session !== {first!r}", 20)
    press(page, 60)
    wait_js(page, "nrt.latencies.length >= 1")
    end = time.monotonic() + 10  # the old session was closed and its notes released
    while first in server.web.manager.sessions:
        assert time.monotonic() < end
        time.sleep(0.02)


def test_computer_keys_play_again_after_moving_a_slider(page, server) -> None:
    open_page(page, server)
    volume = page.locator("#volume")
    volume.focus()
    volume.fill("0.5")  # input + change: the slider lets go of the focus
    assert page.evaluate("() => document.activeElement.id") != "volume"
    page.keyboard.down("f")  # F4: a note, not a slider step
    page.keyboard.up("f")
    wait_js(page, "nrt.roll.notes.some(n => n.mine && n.pitch === 65)")
