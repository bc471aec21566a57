/* notochord_rt.midi._cingest: the compiled twin of midi.ingest.load_midi.
 *
 * ingest(data, merge, max_note_seconds) walks the file (_cingest_smf.c) and then does in C
 * what load_midi does with numpy: unended notes, program state in playback order, the
 * tempo map, parts, collision-aware merging, anonymous ids, labels, overlap repair,
 * zero-length notes, clipping and the final sort. Every floating operation is the one
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

enum { N_ANON = 32, FIRST_DRUM = 129, FIRST_ANON = 257, FIRST_ANON_DRUM = 289, DRUM_CHANNEL = 9 };
enum { LOCAL_PARTS = 16 * 129 }; /* (channel, program + 1) inside one track */
#define DEFAULT_TEMPO_US 500000
#define MAX_PIECE_SECONDS (6 * 3600.0)

typedef struct {
    int64_t key, size, first; /* first: offset of its notes in Work.part_notes */
    double start_min, end_max;
    uint64_t pm[2]; /* pitches */
    int64_t slot, merged_into, next; /* next: the next part of the same slot, -1 */
    int64_t kept, repaired, cut, orphans;
} Part;

typedef struct {
    int64_t group, first, head, tail, kept, inst;
    uint64_t pm[2];
    double t0, t1;
} Slot;

typedef struct {
    Smf smf;
    int merge;
    double max_note;
    int64_t *tticks, *tus; /* tempo map segments */
    double *rate, *at;
    size_t nt;
    ProgramChange *pcs; /* by channel, then playback order */
    size_t pc_off[17];
    Part *parts;
    size_t nparts;
    int64_t *part_notes; /* note indices grouped by part */
    Slot *slots;
    size_t nslots;
    Span *spans, *spans_tmp;
    EventKey *events;
    size_t nevents;
    long long unended, invalid_tempos, tempo_changes, clipped, forced, strikes, zero_len;
    long long kept, instruments, repaired, dropped;
    double min_bpm, max_bpm, duration, too_long;
    int err; /* 1: smf.msg holds the MidiError message, 2: too long */
} Work;

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

#define NOTES(w) ((Note *)(w)->smf.notes.p)
#define NNOTES(w) ((w)->smf.notes.n)

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
static int program_at(const Work *w, int64_t tick, int64_t seq, int chan)
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

/* -- parts: (track, channel, program state), numbered in key order --------------------- */
static int build_parts(Work *w)
{
    Note *notes = NOTES(w);
    size_t nn = NNOTES(w), i = 0, j;
    int64_t *table = alloc_array(3 * LOCAL_PARTS, sizeof *table), *offset;
    int64_t *touched = table + LOCAL_PARTS, *tmp = table + 2 * LOCAL_PARTS;
    w->parts = alloc_array(nn, sizeof *w->parts);
    w->part_notes = alloc_array(nn, sizeof *w->part_notes);
    if (!table || !w->parts || !w->part_notes) {
        free(table);
        return -1;
    }
    for (int k = 0; k < LOCAL_PARTS; k++)
        table[k] = -1;
    while (i < nn) { /* notes are in walk order: one track after the other */
        int64_t track = notes[i].track;
        size_t nt = 0;
        for (j = i; j < nn && notes[j].track == track; j++) {
            int64_t lid = notes[j].chan * 129 + notes[j].prog + 1;
            if (table[lid] < 0) {
                table[lid] = 0;
                touched[nt++] = lid;
            }
        }
        sort_i64(touched, nt, tmp);
        for (size_t r = 0; r < nt; r++) {
            Part *p = &w->parts[w->nparts + r];
            memset(p, 0, sizeof *p);
            p->key = track * LOCAL_PARTS + touched[r];
            p->start_min = INFINITY;
            p->end_max = -INFINITY;
            p->slot = p->merged_into = p->next = -1;
            table[touched[r]] = (int64_t)(w->nparts + r);
        }
        for (size_t k = i; k < j; k++)
            notes[k].part = table[notes[k].chan * 129 + notes[k].prog + 1];
        for (size_t r = 0; r < nt; r++)
            table[touched[r]] = -1;
        w->nparts += nt;
        i = j;
    }
    free(table);
    offset = alloc_array(w->nparts + 1, sizeof *offset);
    if (!offset)
        return -1;
    for (size_t k = 0; k < nn; k++) {
        Part *p = &w->parts[notes[k].part];
        p->size++;
        p->start_min = notes[k].start < p->start_min ? notes[k].start : p->start_min;
        p->end_max = notes[k].end > p->end_max ? notes[k].end : p->end_max;
        p->pm[notes[k].pitch >> 6] |= (uint64_t)1 << (notes[k].pitch & 63);
    }
    offset[0] = 0;
    for (size_t k = 0; k < w->nparts; k++) {
        w->parts[k].first = offset[k];
        offset[k + 1] = offset[k] + w->parts[k].size;
    }
    for (size_t k = 0; k < nn; k++)
        w->part_notes[offset[notes[k].part]++] = (int64_t)k;
    free(offset);
    return 0;
}

/* -- merging parts into slots (one instrument id each) --------------------------------- */
static int64_t new_slot(Work *w, int64_t group, int64_t first)
{
    Slot *s = &w->slots[w->nslots];
    memset(s, 0, sizeof *s);
    s->group = group;
    s->first = first;
    s->head = s->tail = -1;
    s->t0 = INFINITY;
    s->t1 = -INFINITY;
    return (int64_t)w->nslots++;
}

static void add_to_slot(Work *w, int64_t slot, int64_t k, int merged)
{
    Slot *s = &w->slots[slot];
    Part *p = &w->parts[k];
    p->slot = slot;
    if (merged)
        p->merged_into = s->first;
    if (s->tail >= 0)
        w->parts[s->tail].next = k;
    else
        s->head = k;
    s->tail = k;
    s->pm[0] |= p->pm[0];
    s->pm[1] |= p->pm[1];
    s->t0 = p->start_min < s->t0 ? p->start_min : s->t0;
    s->t1 = p->end_max > s->t1 ? p->end_max : s->t1;
}

static size_t gather(const Work *w, int64_t k, Span *out)
{
    const Part *p = &w->parts[k];
    const Note *notes = NOTES(w);
    for (int64_t j = 0; j < p->size; j++) {
        const Note *x = &notes[w->part_notes[p->first + j]];
        out[j].p = x->pitch;
        out[j].s = x->start;
        out[j].e = x->end;
    }
    return (size_t)p->size;
}

/* ingest._Slot.collides: a pitch sounding in the slot and in part k at once, checked
   between neighbours in (pitch, start, end) order exactly as there */
static int collides(Work *w, int64_t slot, int64_t k)
{
    const Slot *s = &w->slots[slot];
    const Part *p = &w->parts[k];
    size_t m;
    if (!((s->pm[0] & p->pm[0]) | (s->pm[1] & p->pm[1])))
        return 0;
    if (p->end_max <= s->t0 || s->t1 <= p->start_min)
        return 0;
    m = gather(w, k, w->spans);
    for (int64_t j = s->head; j >= 0; j = w->parts[j].next)
        m += gather(w, j, w->spans + m);
    sort_spans(w->spans, m, w->spans_tmp);
    for (size_t i = 1; i < m; i++)
        if (w->spans[i].p == w->spans[i - 1].p && w->spans[i].s < w->spans[i - 1].e)
            return 1;
    return 0;
}

static int partition(Work *w)
{
    int64_t lone[N_ANON], used[2] = {0, 0};
    size_t nlone = 0, nm = 0, nn = NNOTES(w);
    Member *members, *tmp;
    w->slots = alloc_array(w->nparts, sizeof *w->slots);
    w->spans = alloc_array(nn, sizeof *w->spans);
    w->spans_tmp = alloc_array(nn, sizeof *w->spans_tmp);
    members = alloc_array(w->nparts, sizeof *members);
    tmp = alloc_array(w->nparts, sizeof *tmp);
    if (!w->slots || !w->spans || !w->spans_tmp || !members || !tmp) {
        free(members);
        free(tmp);
        return -1;
    }
    /* 1. melodic parts with no program change: one anonymous slot each, in part order */
    for (size_t k = 0; k < w->nparts; k++) {
        int64_t key = w->parts[k].key, prog = key % 129 - 1;
        int drum = (key / 129) % 16 == DRUM_CHANNEL;
        if (prog >= 0 || drum) {
            members[nm].named = drum ? FIRST_DRUM + (prog > 0 ? prog : 0) : prog + 1;
            members[nm].size = w->parts[k].size;
            members[nm++].part = (int64_t)k;
        } else if (used[0] < N_ANON) {
            used[0]++;
            lone[nlone] = new_slot(w, 0, (int64_t)k);
            add_to_slot(w, lone[nlone++], (int64_t)k, 0);
        } else { /* all 32 used: share one, round robin */
            w->forced++;
            add_to_slot(w, lone[w->forced % N_ANON], (int64_t)k, 1);
        }
    }
    /* 2. named instruments and kits: largest part first, into the first slot it does not
       collide with, else a new slot while anonymous ids are left */
    sort_members(members, nm, tmp);
    for (size_t i = 0; i < nm;) {
        int64_t named = members[i].named, gstart = (int64_t)w->nslots;
        int kit = named >= FIRST_DRUM;
        for (; i < nm && members[i].named == named; i++) {
            int64_t k = members[i].part, fit = -1, g;
            int have = (int64_t)w->nslots > gstart;
            if (w->merge)
                for (g = gstart; g < (int64_t)w->nslots && fit < 0; g++)
                    if (!collides(w, g, k))
                        fit = g;
            if (fit < 0 && have && used[kit] >= N_ANON) {
                w->forced++;
                fit = gstart;
            } else if (fit < 0 && have) {
                used[kit]++;
            }
            if (fit < 0)
                add_to_slot(w, new_slot(w, named, k), k, 0);
            else
                add_to_slot(w, fit, k, 1);
        }
    }
    free(members);
    free(tmp);
    return 0;
}

/* -- overlap repair per (slot, pitch) -------------------------------------------------- */
static int repair(Work *w)
{
    Note *notes = NOTES(w);
    size_t nn = NNOTES(w), cnt[129] = {0}, *scnt;
    int64_t *by_pitch = alloc_array(nn, sizeof(int64_t));
    int64_t *order = alloc_array(nn, sizeof(int64_t));
    RepairKey *keys = alloc_array(nn, sizeof *keys), *tmp = alloc_array(nn, sizeof *tmp);
    scnt = calloc(w->nslots + 1, sizeof *scnt);
    if (!by_pitch || !order || !keys || !tmp || !scnt) {
        free(by_pitch);
        free(order);
        free(keys);
        free(tmp);
        free(scnt);
        return -1;
    }
    for (size_t i = 0; i < nn; i++) {
        notes[i].slot = w->parts[notes[i].part].slot;
        notes[i].keep = 1;
        cnt[notes[i].pitch + 1]++;
        scnt[notes[i].slot + 1]++;
    }
    for (int p = 0; p < 128; p++)
        cnt[p + 1] += cnt[p];
    for (size_t s = 0; s < w->nslots; s++)
        scnt[s + 1] += scnt[s];
    for (size_t i = 0; i < nn; i++)
        by_pitch[cnt[notes[i].pitch]++] = (int64_t)i;
    for (size_t i = 0; i < nn; i++)
        order[scnt[notes[by_pitch[i]].slot]++] = by_pitch[i];
    for (size_t i = 0; i < nn; i++) {
        const Note *x = &notes[order[i]];
        keys[i].s = x->start;
        keys[i].e = x->end;
        keys[i].tc = x->track * 16 + x->chan; /* ties: the source order of the notes table */
        keys[i].idx = order[i];
    }
    for (size_t a = 0, b; a < nn; a = b) {
        const Note *first = &notes[order[a]];
        for (b = a + 1; b < nn && notes[order[b]].slot == first->slot
                        && notes[order[b]].pitch == first->pitch;
             b++)
            ;
        sort_repair_keys(keys + a, b - a, tmp);
        for (size_t j = a; j + 1 < b; j++) {
            Note *x = &notes[keys[j].idx];
            double next_start = keys[j + 1].s;
            if (next_start < keys[j].e) { /* ended where the next note starts */
                x->end = next_start;
                x->trunc = 1;
            }
            if (x->end == x->start && next_start == x->start) { /* a hidden strike */
                x->keep = 0;
                x->trunc = 0;
                w->strikes++;
            }
        }
    }
    free(by_pitch);
    free(order);
    free(keys);
    free(tmp);
    free(scnt);
    return 0;
}

/* -- instrument ids: in each group the slot with the most notes takes the named id ---- */
static int label(Work *w)
{
    int64_t used[2] = {0, 0};
    Note *notes = NOTES(w);
    for (size_t i = 0; i < NNOTES(w); i++)
        if (notes[i].keep)
            w->slots[notes[i].slot].kept++;
    for (size_t s = 0; s < w->nslots; s++)
        if (w->slots[s].group == 0)
            w->slots[s].inst = FIRST_ANON + used[0]++;
    for (size_t a = 0, b; a < w->nslots; a = b) {
        int64_t group = w->slots[a].group, rank[N_ANON + 1];
        int kit = group >= FIRST_DRUM;
        for (b = a + 1; b < w->nslots && w->slots[b].group == group; b++)
            ;
        if (!group)
            continue;
        if (b - a > N_ANON + 1)
            return -1; /* cannot happen: partition hands out at most 32 anonymous ids */
        for (size_t i = a; i < b; i++) { /* order by (-kept, first part, slot) */
            size_t j = i - a;
            while (j > 0) {
                const Slot *p = &w->slots[rank[j - 1]], *q = &w->slots[i];
                if (p->kept > q->kept || (p->kept == q->kept && p->first < q->first))
                    break;
                rank[j] = rank[j - 1];
                j--;
            }
            rank[j] = (int64_t)i;
        }
        for (size_t r = 0; r < b - a; r++) {
            if (r == 0) {
                w->slots[rank[r]].inst = group;
            } else {
                if (used[kit] >= N_ANON)
                    return -1; /* cannot happen, as above */
                w->slots[rank[r]].inst = (kit ? FIRST_ANON_DRUM : FIRST_ANON) + used[kit]++;
            }
        }
    }
    return 0;
}

/* -- counts per part and the events ----------------------------------------------------- */
static void count_parts(Work *w)
{
    const Note *notes = NOTES(w);
    const Orphan *orph = w->smf.orphans.p;
    for (size_t i = 0; i < NNOTES(w); i++) {
        Part *p = &w->parts[notes[i].part];
        p->kept += notes[i].keep;
        p->repaired += notes[i].dup | notes[i].trunc;
        p->cut += notes[i].trunc;
        w->dropped += notes[i].trunc;
    }
    for (size_t i = 0; i < w->smf.orphans.n; i++) {
        int prog = program_at(w, orph[i].tick, orph[i].seq, orph[i].chan);
        int64_t key = orph[i].track * LOCAL_PARTS + orph[i].chan * 129 + prog + 1;
        size_t lo = 0, hi = w->nparts;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (w->parts[mid].key < key)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < w->nparts && w->parts[lo].key == key)
            w->parts[lo].orphans++;
    }
    w->dropped += (long long)w->smf.orphans.n;
    for (size_t k = 0; k < w->nparts; k++)
        w->repaired += w->parts[k].repaired;
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

static PyObject *part_tuple(const Work *w, const Part *p)
{
    long long key = p->key / 129, prog = p->key % 129 - 1;
    PyObject *program = prog < 0 ? Py_None : NULL, *merged = p->merged_into < 0 ? Py_None : NULL;
    PyObject *out;
    if (!program && !(program = PyLong_FromLongLong(prog)))
        return NULL;
    else if (program == Py_None)
        Py_INCREF(program);
    if (!merged && !(merged = PyLong_FromLongLong(p->merged_into))) {
        Py_DECREF(program);
        return NULL;
    } else if (merged == Py_None) {
        Py_INCREF(merged);
    }
    out = Py_BuildValue("(LLLNLLLN)", (long long)w->slots[p->slot].inst, key / 16, key % 16,
                        program, (long long)p->kept, (long long)p->repaired,
                        (long long)(p->orphans + p->cut), merged);
    return out;
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
