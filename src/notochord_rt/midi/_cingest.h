/* Shared declarations of the compiled MIDI ingest (notochord_rt.midi._cingest).
 *
 * The extension re-does the work of midi.smf.read_smf + midi.ingest.load_midi in C with
 * the same rules, the same error messages and bit-identical float64 times. It is split
 * in three files: _cingest_smf.c (the strict SMF walker and note pairing),
 * _cingest_sort.c (the stable sorts) and _cingest.c (ticks -> seconds, parts, merging,
 * repair, labels, the output objects and the Python module).
 */
#ifndef NOTOCHORD_RT_CINGEST_H
#define NOTOCHORD_RT_CINGEST_H

#include <stddef.h>
#include <stdint.h>

/* one note (a note-on that started a note), in walk order (file order of its note-on) */
typedef struct {
    int64_t start_tick, end_tick; /* end_tick -1 until a later event of its key ends it */
    int64_t seq;                  /* byte offset of its first data byte: playback order */
    int64_t track;
    double start, end;            /* seconds (end: clipped, then repaired) */
    int64_t part, slot;
    int16_t prog;                 /* program in force at the note-on, -1: none */
    uint8_t pitch, vel, chan, dup, unended, keep, trunc;
} Note;

typedef struct { int64_t tick, seq, track; int chan, prog; } ProgramChange;
typedef struct { int64_t tick, seq, us; } TempoEvent;
typedef struct { int64_t tick, seq, track; int chan; } Orphan;

/* a growable array; esz is the element size */
typedef struct { void *p; size_t n, cap, esz; } Vec;

void *vec_push(Vec *v);
void vec_free(Vec *v);
void *alloc_array(size_t n, size_t esz); /* malloc(n * esz) with overflow check; n 0 ok */

/* what the SMF walker collects */
typedef struct {
    const uint8_t *d; /* the SMF bytes (inside a RIFF wrapper if there was one) */
    size_t n;
    unsigned fmt, ntracks_header, division;
    int64_t tracks;
    Vec notes, pcs, tempos, orphans, track_ends; /* Note, ProgramChange, ..., int64_t */
    int64_t state[16 * 128];                     /* sounding note per channel and pitch */
    int64_t bad_pos, bad_track; /* first note message with a data byte >= 128 */
    int nomem;                  /* an allocation failed (MemoryError, not a MidiError) */
    char msg[320];              /* the MidiError message when a step fails */
} Smf;

void smf_init(Smf *s);
void smf_free(Smf *s);
/* 0: read; -1: failed (s->nomem set, or s->msg holds the MidiError message) */
int smf_read(Smf *s, const uint8_t *data, size_t n);
int smf_fail(Smf *s, const char *fmt, ...);

/* stable sorts; tmp holds n elements; return nothing, cannot fail */
typedef struct { double s, e; int64_t tc, idx; } RepairKey; /* start, end, tie-breaks */
typedef struct { double s, e; int p; } Span;                  /* pitch, start, end */
typedef struct { int64_t named, size, part; } Member;         /* step 2 of partition */
typedef struct { double t; uint32_t lo; } EventKey; /* time; bits 0..16 on/inst/pitch */

void sort_pcs_by_tick(ProgramChange *a, size_t n, ProgramChange *tmp);
void sort_tempos_by_tick(TempoEvent *a, size_t n, TempoEvent *tmp);
void sort_repair_keys(RepairKey *a, size_t n, RepairKey *tmp);
void sort_spans(Span *a, size_t n, Span *tmp);
void sort_members(Member *a, size_t n, Member *tmp);
void sort_i64(int64_t *a, size_t n, int64_t *tmp);
/* by (t, on, inst, pitch) = bits 0..16 of lo; bits 24.. of lo are payload; times finite
   and >= 0; -1 if out of memory */
int sort_events(EventKey *a, size_t n, EventKey *tmp);

#endif
