/* Shared declarations of the compiled MIDI ingest (notochord_rt.midi._cingest).
 *
 * The extension re-does the work of midi.smf.read_smf + midi.ingest.load_midi in C with
 * the same rules, the same error messages and bit-identical float64 times. Files:
 * _cingest_smf.c (the strict SMF walker and note pairing), _cingest_parts.c (parts,
 * merging, repair, labels), _cingest_sort.c (the sorts) and _cingest.c (programs, ticks
 * to seconds, events, the output objects and the Python module).
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


/* -- after the walk (_cingest.c: seconds and output; _cingest_parts.c: parts) -------- */
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

#define NOTES(w) ((Note *)(w)->smf.notes.p)
#define NNOTES(w) ((w)->smf.notes.n)

int program_at(const Work *w, int64_t tick, int64_t seq, int chan);
/* each returns 0, or -1 when out of memory (label: -1 "cannot happen") */
int build_parts(Work *w); /* parts in key order; Note.part; notes grouped by part */
int partition(Work *w);   /* slots: the collision-aware merge of ingest._partition */
int repair(Work *w);      /* Note.keep / .trunc / .end: ingest.repair_overlaps per slot */
int label(Work *w);       /* Slot.inst: ingest._label */
void count_parts(Work *w); /* per-part counts and the repaired / dropped totals */

#endif
