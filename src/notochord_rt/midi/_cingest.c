/* notochord_rt.midi._cingest: the compiled twin of midi.ingest.load_midi.
 *
 * ingest(data, merge, max_note_seconds) walks the file (_cingest_smf.c) and then does in C
 * what load_midi does with numpy: unended notes, program state in playback order, the
 * tempo map, clipping, parts, collision-aware merging, anonymous ids, labels, overlap
 * repair (_cingest_parts.c), zero-length notes and the final sort. Every floating operation is the one
 * numpy does, in the same order (build with -ffp-contract=off, no -ffast-math), so the
 * times are bit-identical. Python (midi/ingest.py) wraps the result:
 *
 *   success: (inst, pitch, time, vel, parts, stats, logs): four bytearrays (int16, int16,
 *            float64, int16 in native order), a tuple of part tuples (inst, track,
 *            channel, program or None, notes, repaired, dropped, merged_into or None), the
 *            stats values in load_midi's order, and logs;
 *   refused: (message, logs), or (duration, logs) for a piece that is too long;
 *   logs:    (header track count, tracks found, invalid tempos, forced merges), -1 where
 *            load_midi would not have got that far (so Python logs what it would log).
 *
 * Only MemoryError is raised. Nothing here recurses, every read is bounds-checked and
 * every allocation size is checked for overflow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "_cingest.h"

static void work_free(Work *w)
{
    smf_free(&w->smf);
    free(w->tticks);
    free(w->tus);
    free(w->rate);
    free(w->at);
    free(w->pcs);
    free(w->parts);
    free(w->part_notes);
    free(w->slots);
    free(w->spans);
    free(w->spans_tmp);
    free(w->events);
}

/* -- program state in playback order --------------------------------------------------- */
static int group_programs(Work *w)
{
    size_t n = w->smf.pcs.n, count[17] = {0};
    ProgramChange *a = w->smf.pcs.p, *tmp = alloc_array(n, sizeof *tmp);
    if (!tmp || !(w->pcs = alloc_array(n, sizeof *w->pcs))) {
        free(tmp);
        return -1;
    }
    sort_pcs_by_tick(a, n, tmp); /* walk order is position order: stable by tick */
    free(tmp);
    for (size_t i = 0; i < n; i++)
        count[a[i].chan + 1]++;
    for (int c = 0; c < 16; c++)
        count[c + 1] += count[c];
    memcpy(w->pc_off, count, sizeof count);
    for (size_t i = 0; i < n; i++)
        w->pcs[count[a[i].chan]++] = a[i];
    return 0;
}

/* the program in force on chan at playback position (tick, seq); -1: none */
int program_at(const Work *w, int64_t tick, int64_t seq, int chan)
{
    const ProgramChange *a = w->pcs + w->pc_off[chan];
    size_t lo = 0, hi = w->pc_off[chan + 1] - w->pc_off[chan];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid].tick < tick || (a[mid].tick == tick && a[mid].seq < seq))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? a[lo - 1].prog : -1;
}

/* -- ticks to seconds ------------------------------------------------------------------ */
static int tempo_map(Work *w)
{
    size_t n = w->smf.tempos.n, nv = 0, nt = 0;
    TempoEvent *t = w->smf.tempos.p, *v = alloc_array(n, sizeof *v), *tmp;
    int64_t usmax, usmin;
    double scale = 1.0 / ((double)w->smf.division * 1e6);
    if (!v)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (t[i].us <= 0)
            w->invalid_tempos++;
        else
            v[nv++] = t[i];
    }
    tmp = alloc_array(nv, sizeof *tmp);
    w->tticks = alloc_array(nv + 1, sizeof *w->tticks);
    w->tus = alloc_array(nv + 1, sizeof *w->tus);
    w->rate = alloc_array(nv + 1, sizeof *w->rate);
    w->at = alloc_array(nv + 1, sizeof *w->at);
    if (!tmp || !w->tticks || !w->tus || !w->rate || !w->at) {
        free(v);
        free(tmp);
        return -1;
    }
    sort_tempos_by_tick(v, nv, tmp); /* playback order: tick, then file position */
    free(tmp);
    if (!nv || v[0].tick > 0) {
        w->tticks[0] = 0;
        w->tus[0] = DEFAULT_TEMPO_US;
        nt = 1;
    }
    for (size_t i = 0; i < nv; i++) {
        if (i + 1 < nv && v[i + 1].tick == v[i].tick)
            continue; /* the last at a tick wins */
        w->tticks[nt] = v[i].tick;
        w->tus[nt++] = v[i].us;
    }
    free(v);
    w->nt = nt;
    w->tempo_changes = (long long)nt - 1;
    usmax = usmin = w->tus[0];
    for (size_t i = 0; i < nt; i++) {
        usmax = w->tus[i] > usmax ? w->tus[i] : usmax;
        usmin = w->tus[i] < usmin ? w->tus[i] : usmin;
        w->rate[i] = (double)w->tus[i] * scale; /* seconds per tick */
    }
    w->min_bpm = 60e6 / (double)usmax;
    w->max_bpm = 60e6 / (double)usmin;
    w->at[0] = 0.0;
    for (size_t i = 1; i < nt; i++)
        w->at[i] = w->at[i - 1] + (double)(w->tticks[i] - w->tticks[i - 1]) * w->rate[i - 1];
    return 0;
}

static double to_seconds(const Work *w, int64_t x)
{
    size_t lo = 0, hi = w->nt, i;
    while (lo < hi) { /* how many segments start at or before x */
        size_t mid = lo + (hi - lo) / 2;
        if (w->tticks[mid] <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    i = lo ? lo - 1 : 0;
    return w->at[i] + (double)(x - w->tticks[i]) * w->rate[i];
}

/* unended notes, programs, seconds, clipping; 1 with w->err set for a refused file */
static int notes_in_seconds(Work *w)
{
    Note *notes = NOTES(w);
    size_t nn = NNOTES(w);
    const int64_t *track_end = w->smf.track_ends.p;
    int64_t file_end = -1;
    int finite = 1;
    for (size_t i = 0; i < w->smf.track_ends.n; i++)
        file_end = track_end[i] > file_end ? track_end[i] : file_end;
    for (size_t i = 0; i < nn; i++) {
        w->unended += notes[i].unended;
        file_end = notes[i].end_tick > file_end ? notes[i].end_tick : file_end;
    }
    if (group_programs(w) || tempo_map(w))
        return -1;
    for (size_t i = 0; i < nn; i++) {
        Note *x = &notes[i];
        if (x->unended) {
            int64_t e = track_end[x->track];
            x->end_tick = e > x->start_tick ? e : file_end;
        }
        x->prog = (int16_t)program_at(w, x->start_tick, x->seq, x->chan);
        x->start = to_seconds(w, x->start_tick);
        x->end = to_seconds(w, x->end_tick);
        if (x->end - x->start > w->max_note) {
            w->clipped++;
            x->end = x->start + w->max_note;
        }
        if (!isfinite(x->end))
            finite = 0;
        else if (i == 0 || x->end > w->duration)
            w->duration = x->end;
    }
    if (!finite) {
        w->err = 1;
        smf_fail(&w->smf, "note times are not finite (broken tempo map)");
        return 1;
    }
    if (w->duration > MAX_PIECE_SECONDS) {
        w->err = 2;
        w->too_long = w->duration;
        return 1;
    }
    return 0;
}

static int make_events(Work *w)
{
    const Note *notes = NOTES(w);
    size_t nn = NNOTES(w), m = 0;
    unsigned char seen[FIRST_ANON_DRUM + N_ANON] = {0};
    EventKey *tmp;
    for (size_t i = 0; i < nn; i++)
        w->kept += notes[i].keep;
    if ((size_t)w->kept > SIZE_MAX / 2)
        return -1;
    w->nevents = 2 * (size_t)w->kept;
    w->events = alloc_array(w->nevents, sizeof *w->events);
    tmp = alloc_array(w->nevents, sizeof *tmp);
    if (!w->events || !tmp) {
        free(tmp);
        return -1;
    }
    for (size_t i = 0; i < nn; i++) {
        const Note *x = &notes[i];
        uint32_t inst, lo;
        double end = x->end;
        if (!x->keep)
            continue;
        inst = (uint32_t)w->slots[x->slot].inst;
        lo = inst << 7 | x->pitch;
        if (end == x->start) { /* zero length: the note-off just after */
            w->zero_len++;
            end = nextafter(x->start, INFINITY);
        }
        if (!seen[inst]) {
            seen[inst] = 1;
            w->instruments++;
        }
        w->events[m].t = x->start;
        w->events[m++].lo = lo | (uint32_t)1 << 16 | (uint32_t)x->vel << 24;
        w->events[m].t = end;
        w->events[m++].lo = lo;
    }
    if (sort_events(w->events, m, tmp)) {
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

/* everything after the walk; -1 out of memory, -2 internal error, 1 refused (w->err), 0 done */
static int process(Work *w)
{
    int r = notes_in_seconds(w);
    if (r)
        return r;
    if (build_parts(w) || partition(w) || repair(w))
        return -1;
    if (label(w))
        return -2;
    count_parts(w);
    if (make_events(w))
        return -1;
    w->duration = w->nevents ? w->events[w->nevents - 1].t : 0.0;
    return 0;
}

/* -- Python objects ---------------------------------------------------------------------- */
static PyObject *logs_tuple(const Work *w, int walked, int mapped, int merged)
{
    return Py_BuildValue("(LLLL)", walked ? (long long)w->smf.ntracks_header : -1LL,
                         walked ? (long long)w->smf.tracks : -1LL,
                         mapped ? w->invalid_tempos : -1LL, merged ? w->forced : -1LL);
}

static PyObject *refusal(PyObject *what, PyObject *logs)
{
    PyObject *out;
    if (!what || !logs) {
        Py_XDECREF(what);
        Py_XDECREF(logs);
        return NULL;
    }
    out = PyTuple_Pack(2, what, logs);
    Py_DECREF(what);
    Py_DECREF(logs);
    return out;
}

static PyObject *int_or_none(long long v)
{
    if (v < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

static PyObject *part_tuple(const Work *w, const Part *p)
{
    long long key = p->key / 129;
    PyObject *program = int_or_none(p->key % 129 - 1), *merged = int_or_none(p->merged_into);
    if (!program || !merged) {
        Py_XDECREF(program);
        Py_XDECREF(merged);
        return NULL;
    }
    return Py_BuildValue("(LLLNLLLN)", (long long)w->slots[p->slot].inst, key / 16, key % 16,
                         program, (long long)p->kept, (long long)p->repaired,
                         (long long)(p->orphans + p->cut), merged);
}

static PyObject *result(const Work *w)
{
    size_t n = w->nevents;
    PyObject *inst = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(2 * n));
    PyObject *pitch = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(2 * n));
    PyObject *time = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(8 * n));
    PyObject *vel = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(2 * n));
    PyObject *parts = PyTuple_New((Py_ssize_t)w->nparts), *stats = NULL, *logs = NULL;
    if (!inst || !pitch || !time || !vel || !parts)
        goto fail;
    {
        int16_t *pi = (int16_t *)PyByteArray_AS_STRING(inst);
        int16_t *pp = (int16_t *)PyByteArray_AS_STRING(pitch);
        int16_t *pv = (int16_t *)PyByteArray_AS_STRING(vel);
        double *pt = (double *)PyByteArray_AS_STRING(time);
        for (size_t i = 0; i < n; i++) {
            uint32_t lo = w->events[i].lo;
            pi[i] = (int16_t)((lo >> 7) & 0x1FF);
            pp[i] = (int16_t)(lo & 0x7F);
            pv[i] = (int16_t)((lo >> 16) & 1 ? lo >> 24 : 0);
            pt[i] = w->events[i].t;
        }
    }
    for (size_t k = 0; k < w->nparts; k++) {
        PyObject *t = part_tuple(w, &w->parts[k]);
        if (!t)
            goto fail;
        PyTuple_SET_ITEM(parts, (Py_ssize_t)k, t);
    }
    stats = Py_BuildValue(
        "(LLLLLLddLLLLLLLLLLd)", (long long)w->smf.fmt, (long long)w->smf.tracks,
        (long long)w->smf.division,
        w->unended, w->invalid_tempos, w->tempo_changes, w->min_bpm, w->max_bpm, w->clipped,
        w->forced, w->strikes, w->zero_len, w->kept, (long long)n, (long long)w->nparts,
        w->instruments, w->repaired, w->dropped, w->duration);
    logs = logs_tuple(w, 1, 1, 1);
    if (!stats || !logs)
        goto fail;
    return Py_BuildValue("(NNNNNNN)", inst, pitch, time, vel, parts, stats, logs);
fail:
    Py_XDECREF(inst);
    Py_XDECREF(pitch);
    Py_XDECREF(time);
    Py_XDECREF(vel);
    Py_XDECREF(parts);
    Py_XDECREF(stats);
    Py_XDECREF(logs);
    return NULL;
}

static PyObject *ingest(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    int merge, walked = 0, processed = 0;
    double max_note;
    Work w;
    PyObject *out = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*pd:ingest", &buf, &merge, &max_note))
        return NULL;
    memset(&w, 0, sizeof w);
    smf_init(&w.smf);
    w.merge = merge;
    w.max_note = max_note;
    Py_BEGIN_ALLOW_THREADS
    walked = smf_read(&w.smf, buf.buf, (size_t)buf.len);
    if (!walked && w.smf.bad_pos < 0 && w.smf.notes.n)
        processed = process(&w);
    Py_END_ALLOW_THREADS
    if (w.smf.nomem || processed == -1) {
        PyErr_NoMemory();
    } else if (processed == -2) {
        PyErr_SetString(PyExc_SystemError, "_cingest: more anonymous ids than partition gave");
    } else if (walked) { /* refused by the walker */
        out = refusal(PyUnicode_FromString(w.smf.msg), logs_tuple(&w, 0, 0, 0));
    } else if (w.smf.bad_pos >= 0) {
        snprintf(w.smf.msg, sizeof w.smf.msg,
                 "corrupt track %lld: data byte \xe2\x89\xa5 128 in a note message at byte %lld",
                 (long long)w.smf.bad_track, (long long)w.smf.bad_pos);
        out = refusal(PyUnicode_FromString(w.smf.msg), logs_tuple(&w, 1, 0, 0));
    } else if (!w.smf.notes.n) {
        out = refusal(PyUnicode_FromString("no notes"), logs_tuple(&w, 1, 0, 0));
    } else if (processed == 1) {
        PyObject *what = w.err == 2 ? PyFloat_FromDouble(w.too_long)
                                    : PyUnicode_FromString(w.smf.msg);
        out = refusal(what, logs_tuple(&w, 1, 1, 0));
    } else {
        out = result(&w);
    }
    work_free(&w);
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"ingest", ingest, METH_VARARGS,
     "ingest(data, merge, max_note_seconds) -> tuple: load_midi's work on the bytes of a "
     "Standard MIDI File (see notochord_rt.midi.ingest)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cingest",
    "The compiled MIDI ingest used by notochord_rt.midi.ingest.load_midi.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cingest(void) { return PyModule_Create(&module); }
