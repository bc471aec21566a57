/* The strict SMF walker of the compiled ingest: the C twin of midi/smf.py.
 *
 * Same checks, same messages, same positions as smf.read_smf. Every read is bounded by
 * the end of the data (a read past it is "a message is cut off", as an IndexError is in
 * Python); reads past the end of a track chunk but inside the data are allowed and end
 * in "its last message runs past the end of the track", again as in Python. Notes are
 * paired while walking (one state per channel and pitch, reset after each track), which
 * gives the same pairs as the sort-based pairing of smf._pair_notes.
 */
#include "_cingest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *alloc_array(size_t n, size_t esz)
{
    if (esz && n > SIZE_MAX / esz)
        return NULL;
    return malloc(n && esz ? n * esz : 1);
}

void *vec_push(Vec *v)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        void *p;
        if (cap < v->cap || cap > SIZE_MAX / v->esz)
            return NULL;
        p = realloc(v->p, cap * v->esz);
        if (!p)
            return NULL;
        v->p = p;
        v->cap = cap;
    }
    return (char *)v->p + v->esz * v->n++;
}

void vec_free(Vec *v)
{
    free(v->p);
    v->p = NULL;
    v->n = v->cap = 0;
}

void smf_init(Smf *s)
{
    memset(s, 0, sizeof *s);
    s->notes.esz = sizeof(Note);
    s->pcs.esz = sizeof(ProgramChange);
    s->tempos.esz = sizeof(TempoEvent);
    s->orphans.esz = sizeof(Orphan);
    s->track_ends.esz = sizeof(int64_t);
    for (int k = 0; k < 16 * 128; k++)
        s->state[k] = -1;
    s->bad_pos = -1;
}

void smf_free(Smf *s)
{
    vec_free(&s->notes);
    vec_free(&s->pcs);
    vec_free(&s->tempos);
    vec_free(&s->orphans);
    vec_free(&s->track_ends);
}

int smf_fail(Smf *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->msg, sizeof s->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static int nomem(Smf *s)
{
    s->nomem = 1;
    return -1;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

/* a variable-length number at *pp: 0 read, 1 cut off by the end of the data, 2 longer
   than 4 bytes (*pp is then after the 4th byte, for the message) */
static int varlen(const uint8_t *d, size_t n, size_t *pp, size_t *out)
{
    size_t p = *pp, v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned b;
        if (p >= n)
            return 1;
        b = d[p++];
        v = (v << 7) | (b & 0x7F);
        if (b < 0x80) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    *pp = p;
    return 2;
}

/* a note message whose data bytes are at p, p + 1 (both inside its chunk) */
static int note_message(Smf *s, int64_t tick, size_t p, unsigned status, int64_t track)
{
    unsigned pitch = s->d[p], vel = s->d[p + 1], ch = status & 15, key;
    int on;
    int64_t was;
    if (s->bad_pos >= 0)
        return 0; /* the file is refused anyway: only the first bad byte matters */
    if ((pitch | vel) >= 0x80) {
        s->bad_pos = (int64_t)p;
        s->bad_track = track;
        return 0;
    }
    key = ch * 128 + pitch;
    on = status >= 0x90 && vel > 0;
    was = s->state[key];
    if (was >= 0) { /* the next event of a sounding key ends its note */
        Note *x = (Note *)s->notes.p + was;
        x->end_tick = tick;
        x->dup = (uint8_t)on;
    }
    if (on) {
        Note *x = vec_push(&s->notes);
        if (!x)
            return nomem(s);
        memset(x, 0, sizeof *x);
        x->start_tick = tick;
        x->end_tick = -1;
        x->seq = (int64_t)p;
        x->track = track;
        x->pitch = (uint8_t)pitch;
        x->vel = (uint8_t)vel;
        x->chan = (uint8_t)ch;
        s->state[key] = (int64_t)s->notes.n - 1;
    } else {
        if (was < 0) {
            Orphan *o = vec_push(&s->orphans);
            if (!o)
                return nomem(s);
            o->tick = tick;
            o->seq = (int64_t)p;
            o->track = track;
            o->chan = (int)ch;
        }
        s->state[key] = -1;
    }
    return 0;
}

/* mark the notes of this track still sounding as unended and reset their state */
static void end_track(Smf *s, size_t first)
{
    Note *notes = s->notes.p;
    if (s->bad_pos >= 0)
        return;
    for (size_t i = first; i < s->notes.n; i++) {
        if (notes[i].end_tick < 0) {
            notes[i].unended = 1;
            s->state[notes[i].chan * 128 + notes[i].pitch] = -1;
        }
    }
}

#define CUT_OFF "truncated track %lld: a message is cut off"
#define CORRUPT "corrupt track %lld: "

/* walk one MTrk chunk [p, stop); its last tick goes to *end_tick */
static int walk_track(Smf *s, size_t p, size_t stop, int64_t track, int64_t *end_tick)
{
    const uint8_t *d = s->d;
    size_t n = s->n, first = s->notes.n, length;
    int64_t tick = 0;
    unsigned status = 0, b;
    long long tr = (long long)track;
    int r;
    while (p < stop) {
        b = d[p++];
        if (b < 0x80) {
            tick += b;
        } else {
            int64_t delta = b & 0x7F;
            int k;
            for (k = 0; k < 3; k++) {
                if (p >= n)
                    return smf_fail(s, CUT_OFF, tr);
                b = d[p++];
                delta = (delta << 7) | (b & 0x7F);
                if (b < 0x80)
                    break;
            }
            if (k == 3)
                return smf_fail(s, CORRUPT "variable-length delta longer than 4 bytes at "
                                "byte %zu", tr, p);
            tick += delta;
        }
        if (p >= n)
            return smf_fail(s, CUT_OFF, tr);
        b = d[p];
        if (b >= 0x80) {
            p++;
            if (b < 0xF0) {
                status = b;
            } else if (b == 0xFF) { /* meta: type, length, data */
                unsigned mtype;
                if (p + 1 >= n)
                    return smf_fail(s, CUT_OFF, tr);
                mtype = d[p];
                length = d[p + 1];
                if (length < 0x80) {
                    p += 2;
                } else {
                    p += 1;
                    r = varlen(d, n, &p, &length);
                    if (r == 1)
                        return smf_fail(s, CUT_OFF, tr);
                    if (r == 2)
                        return smf_fail(s, CORRUPT "variable-length number longer than 4 "
                                        "bytes at byte %zu", tr, p);
                }
                if (mtype == 0x51 && length == 3) {
                    if (p + 3 <= n) { /* else the track is cut: the value never matters */
                        TempoEvent *t = vec_push(&s->tempos);
                        if (!t)
                            return nomem(s);
                        t->tick = tick;
                        t->seq = (int64_t)p;
                        t->us = (int64_t)d[p] << 16 | (int64_t)d[p + 1] << 8 | d[p + 2];
                    }
                } else if (mtype == 0x2F) {
                    *end_tick = tick;
                    end_track(s, first);
                    return 0;
                }
                p += length;
                continue;
            } else if (b == 0xF0 || b == 0xF7) { /* sysex: length, data */
                r = varlen(d, n, &p, &length);
                if (r == 1)
                    return smf_fail(s, CUT_OFF, tr);
                if (r == 2)
                    return smf_fail(s, CORRUPT "variable-length number longer than 4 bytes "
                                    "at byte %zu", tr, p);
                p += length;
                continue;
            } else {
                return smf_fail(s, CORRUPT "status byte 0x%02X is not allowed in a MIDI file",
                                tr, b);
            }
        } else if (!status) {
            return smf_fail(s, CORRUPT "running status with no status byte before it", tr);
        }
        if (status < 0xA0) { /* note-off 0x8n, note-on 0x9n */
            if (p + 2 <= stop && note_message(s, tick, p, status, track))
                return -1;
            p += 2; /* past the chunk: the track is cut, reported below */
        } else if (status < 0xC0 || status >= 0xE0) {
            p += 2;
        } else {
            if (status < 0xD0) {
                ProgramChange *pc;
                if (p >= n)
                    return smf_fail(s, CUT_OFF, tr);
                pc = vec_push(&s->pcs);
                if (!pc)
                    return nomem(s);
                pc->tick = tick;
                pc->seq = (int64_t)p;
                pc->track = track;
                pc->chan = (int)(status & 15);
                pc->prog = d[p] & 0x7F;
            }
            p += 1;
        }
    }
    if (p > stop)
        return smf_fail(s, "truncated track %lld: its last message runs past the end of the "
                        "track", tr);
    *end_tick = tick;
    end_track(s, first);
    return 0;
}

/* the SMF inside an RIFF RMID file; 0 and *d, *n unchanged if it is not one */
static int unwrap_riff(Smf *s, const uint8_t **d, size_t *n)
{
    const uint8_t *data = *d;
    size_t len = *n, pos = 12;
    if (len < 12 || memcmp(data, "RIFF", 4) || memcmp(data + 8, "RMID", 4))
        return 0;
    while (pos + 8 <= len) {
        size_t size = (size_t)data[pos + 4] | (size_t)data[pos + 5] << 8
                      | (size_t)data[pos + 6] << 16 | (size_t)data[pos + 7] << 24;
        if (!memcmp(data + pos, "data", 4)) {
            size_t start = pos + 8, stop = start + size;
            *d = data + start;
            *n = (stop < len ? stop : len) - start;
            return 0;
        }
        pos += 8 + size + (size & 1);
    }
    return smf_fail(s, "not a MIDI file (RIFF RMID without a data chunk)");
}

int smf_read(Smf *s, const uint8_t *data, size_t n)
{
    size_t pos, hlen;
    if (unwrap_riff(s, &data, &n))
        return -1;
    s->d = data;
    s->n = n;
    if (n < 14 || memcmp(data, "MThd", 4))
        return smf_fail(s, "not a MIDI file (bad header)");
    hlen = be32(data + 4);
    if (hlen < 6 || 8 + hlen > n)
        return smf_fail(s, "not a MIDI file (bad header length %zu)", hlen);
    s->fmt = be16(data + 8);
    s->ntracks_header = be16(data + 10);
    s->division = be16(data + 12);
    if (s->fmt == 2)
        return smf_fail(s, "type 2 MIDI is not supported");
    if (s->fmt > 2)
        return smf_fail(s, "unknown MIDI file format %u", s->fmt);
    if (s->division & 0x8000)
        return smf_fail(s, "SMPTE time division is not supported");
    if (s->division == 0)
        return smf_fail(s, "division 0 (no ticks per quarter note)");
    pos = 8 + hlen;
    while (pos + 8 <= n) {
        size_t length = be32(data + pos + 4), start = pos + 8, stop = start + length;
        if (!memcmp(data + pos, "MTrk", 4)) {
            int64_t end_tick = 0, *slot;
            if (stop > n)
                return smf_fail(s, "truncated track %lld: its chunk says %zu bytes, only %zu "
                                "are left in the file", (long long)s->tracks, length, n - start);
            if (walk_track(s, start, stop, s->tracks, &end_tick))
                return -1;
            slot = vec_push(&s->track_ends);
            if (!slot)
                return nomem(s);
            *slot = end_tick;
            s->tracks++;
        }
        pos = stop;
    }
    if (!s->tracks)
        return smf_fail(s, "no tracks (no MTrk chunk)");
    return 0;
}
