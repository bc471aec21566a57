/* Stable sorts of the compiled ingest.
 *
 * A merge sort (insertion-sorted runs of 16, then bottom-up merges) generated for each
 * record type with an inline comparison; an already sorted input costs one pass. The
 * events (sorted by time, note-on, instrument, pitch) first go into buckets by time.
 */
#include "_cingest.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEFINE_MERGE_SORT(NAME, T, LESS)                                                   \
    static void NAME##_insertion(T *a, size_t n)                                           \
    {                                                                                       \
        for (size_t i = 1; i < n; i++) {                                                    \
            T x = a[i];                                                                     \
            size_t j = i;                                                                   \
            while (j > 0 && LESS((&x), (&a[j - 1]))) {                                      \
                a[j] = a[j - 1];                                                            \
                j--;                                                                        \
            }                                                                               \
            a[j] = x;                                                                       \
        }                                                                                   \
    }                                                                                       \
    void NAME(T *a, size_t n, T *tmp)                                                       \
    {                                                                                       \
        size_t i, w, run = 16;                                                              \
        T *src = a, *dst = tmp, *t;                                                         \
        for (i = 1; i < n && !LESS((&a[i]), (&a[i - 1])); i++)                              \
            ;                                                                               \
        if (i >= n)                                                                         \
            return;                                                                         \
        for (i = 0; i < n; i += run)                                                        \
            NAME##_insertion(a + i, n - i < run ? n - i : run);                             \
        for (w = run; w < n; w *= 2) {                                                      \
            for (i = 0; i < n; i += 2 * w) {                                                \
                size_t m = i + w < n ? i + w : n, e = i + 2 * w < n ? i + 2 * w : n;        \
                size_t x = i, y = m, k = i;                                                 \
                while (x < m && y < e)                                                      \
                    dst[k++] = LESS((&src[y]), (&src[x])) ? src[y++] : src[x++];            \
                while (x < m)                                                               \
                    dst[k++] = src[x++];                                                    \
                while (y < e)                                                               \
                    dst[k++] = src[y++];                                                    \
            }                                                                               \
            t = src;                                                                        \
            src = dst;                                                                      \
            dst = t;                                                                        \
        }                                                                                   \
        if (src != a)                                                                       \
            memcpy(a, src, n * sizeof(T));                                                  \
    }

#define PC_LESS(a, b) ((a)->tick < (b)->tick)
#define TEMPO_LESS(a, b) ((a)->tick < (b)->tick)
#define REPAIR_LESS(a, b)                                                                   \
    ((a)->s < (b)->s                                                                        \
     || ((a)->s == (b)->s                                                                   \
         && ((a)->e < (b)->e                                                                \
             || ((a)->e == (b)->e                                                           \
                 && ((a)->tc < (b)->tc || ((a)->tc == (b)->tc && (a)->idx < (b)->idx))))))
#define SPAN_LESS(a, b)                                                                     \
    ((a)->p < (b)->p                                                                        \
     || ((a)->p == (b)->p && ((a)->s < (b)->s || ((a)->s == (b)->s && (a)->e < (b)->e))))
#define MEMBER_LESS(a, b)                                                                   \
    ((a)->named < (b)->named                                                                \
     || ((a)->named == (b)->named                                                           \
         && ((a)->size > (b)->size || ((a)->size == (b)->size && (a)->part < (b)->part))))
#define I64_LESS(a, b) (*(a) < *(b))

DEFINE_MERGE_SORT(sort_pcs_by_tick, ProgramChange, PC_LESS)
DEFINE_MERGE_SORT(sort_tempos_by_tick, TempoEvent, TEMPO_LESS)
DEFINE_MERGE_SORT(sort_repair_keys, RepairKey, REPAIR_LESS)
DEFINE_MERGE_SORT(sort_spans, Span, SPAN_LESS)
DEFINE_MERGE_SORT(sort_members, Member, MEMBER_LESS)
DEFINE_MERGE_SORT(sort_i64, int64_t, I64_LESS)

#define EVENT_LESS(a, b)                                                                    \
    ((a)->t < (b)->t || ((a)->t == (b)->t && ((a)->lo & 0x1FFFF) < ((b)->lo & 0x1FFFF)))
DEFINE_MERGE_SORT(sort_events_merge, EventKey, EVENT_LESS)

/* A bucket sort on time (times are finite and >= 0): events are spread over n buckets by
   a monotone function of their time, so each bucket holds the events of one time span,
   mostly one chord; each bucket is then sorted by the full key (insertion sort, or the
   merge sort for a crowded bucket, so a bad distribution stays O(n log n)). */
int sort_events(EventKey *a, size_t n, EventKey *tmp)
{
    double tmin, tmax, scale;
    size_t *start;
    if (n < 64) {
        sort_events_merge(a, n, tmp);
        return 0;
    }
    tmin = tmax = a[0].t;
    for (size_t i = 1; i < n; i++) {
        tmin = a[i].t < tmin ? a[i].t : tmin;
        tmax = a[i].t > tmax ? a[i].t : tmax;
    }
    scale = (double)n / (tmax - tmin);
    if (!(tmax > tmin) || !isfinite(scale)) {
        sort_events_merge(a, n, tmp);
        return 0;
    }
    start = calloc(n + 1, sizeof *start);
    if (!start)
        return -1;
#define BUCKET(x) ((size_t)(((x)->t - tmin) * scale) < n ? (size_t)(((x)->t - tmin) * scale) : n - 1)
    for (size_t i = 0; i < n; i++)
        start[BUCKET(&a[i]) + 1]++;
    for (size_t b = 0; b < n; b++)
        start[b + 1] += start[b];
    for (size_t i = 0; i < n; i++)
        tmp[start[BUCKET(&a[i])]++] = a[i];
#undef BUCKET
    /* start[b] is now the end of bucket b */
    for (size_t b = 0, lo = 0; b < n; lo = start[b++]) {
        size_t m = start[b] - lo;
        if (m < 2)
            continue;
        if (m <= 32)
            sort_events_merge_insertion(tmp + lo, m);
        else
            sort_events_merge(tmp + lo, m, a + lo);
    }
    memcpy(a, tmp, n * sizeof *a);
    free(start);
    return 0;
}
