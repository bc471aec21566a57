/* Parts, merging, repair and labels of the compiled ingest: the C twin of
 * ingest._partition, ingest._Slot.collides, ingest.repair_overlaps, ingest._label and
 * the counts of ingest._part_infos. Same order of decisions, same tie-breaks.
 */
#include "_cingest.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* -- parts: (track, channel, program state), numbered in key order --------------------- */
int build_parts(Work *w)
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

int partition(Work *w)
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
int repair(Work *w)
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
int label(Work *w)
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

/* -- counts per part -------------------------------------------------------------------- */
void count_parts(Work *w)
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
