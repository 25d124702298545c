#include "ingest.h"

#include "db/allocation.h"
#include "db/copy.h"
#include "db/customers.h"
#include "server/alloc.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/crypto.h"
#include "server/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    ROLLUP_GRAIN_S = 15 * 60,
    MONTHS_KNOWN = 12 * 400,
    COPY_KEYS_MIN = 256, /* from this many orders in a group, new keys are copied in */
};

/* Months (since 1970-01) whose partitions this process has made sure of. */
static unsigned char months_ready[MONTHS_KNOWN];
static pthread_mutex_t months_lock = PTHREAD_MUTEX_INITIALIZER;
/* Set when an insert found no partition for its row: a partition this process knew of was
 * dropped (retention) behind its back. */
static atomic_bool partition_missing;

/* ---- PostgreSQL array literals ---- */

static void array_begin(struct buf *b)
{
    buf_puts(b, "{");
}

static void array_sep(struct buf *b)
{
    if (b->len > 1)
        buf_puts(b, ",");
}

/* These run for every column of every order of a group: digits and hex are written by hand
 * and text is copied in runs, not through printf or byte by byte. */
static void array_int(struct buf *b, int64_t v)
{
    char digits[24];
    char *end = digits + sizeof(digits), *p = end;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    array_sep(b);
    buf_append(b, p, (size_t)(end - p));
}

/* A text element, quoted; backslash and double quote escaped; NULL as SQL NULL. */
static void array_text(struct buf *b, const char *s)
{
    array_sep(b);
    if (!s) {
        buf_puts(b, "NULL");
        return;
    }
    buf_append(b, "\"", 1);
    while (*s) {
        size_t run = strcspn(s, "\"\\");
        buf_append(b, s, run);
        s += run;
        if (*s) {
            char escaped[2] = {'\\', *s++};
            buf_append(b, escaped, 2);
        }
    }
    buf_append(b, "\"", 1);
}

static void array_hex(struct buf *b, const unsigned char *bytes, size_t n)
{
    char hex[2 * 64 + 1];
    array_sep(b);
    for (size_t i = 0; i < n; i += 64) {
        size_t k = n - i < 64 ? n - i : 64;
        hex_encode(hex, bytes + i, k);
        buf_append(b, hex, 2 * k);
    }
}

static const char *array_end(struct buf *b)
{
    buf_puts(b, "}");
    return b->data;
}

/* A set of array parameters of one statement. */
struct params {
    struct buf cols[16];
    const char *values[16];
    int n;
};

static void params_begin(struct params *p, int n)
{
    memset(p, 0, sizeof(*p));
    p->n = n;
    for (int i = 0; i < n; i++)
        array_begin(&p->cols[i]);
}

static const char *const *params_end(struct params *p)
{
    for (int i = 0; i < p->n; i++)
        p->values[i] = array_end(&p->cols[i]);
    return p->values;
}

static void params_free(struct params *p)
{
    for (int i = 0; i < p->n; i++)
        buf_free(&p->cols[i]);
}

/* ---- partitions ---- */

static int month_index(int64_t placed_at_us)
{
    time_t t = (time_t)(placed_at_us / 1000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    return (tm.tm_year - 70) * 12 + tm.tm_mon;
}

/* Creates the monthly partitions of orders that have none yet (late data may be old). */
static bool ensure_partitions(struct db_conn *c, struct db_order **orders, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int m = month_index(orders[i]->placed_at_us);
        if (m < 0 || m >= MONTHS_KNOWN)
            return false;
        pthread_mutex_lock(&months_lock);
        bool ready = months_ready[m];
        pthread_mutex_unlock(&months_lock);
        if (ready)
            continue;
        char first[24];
        snprintf(first, sizeof(first), "%lld",
                 (long long)(orders[i]->placed_at_us / 1000000));
        const char *params[] = {first, "1"};
        PGresult *r = db_exec(c, DB_ENSURE_PARTITIONS, params);
        bool ok = db_ok(r, PGRES_TUPLES_OK);
        PQclear(r);
        if (!ok)
            return false;
        pthread_mutex_lock(&months_lock);
        months_ready[m] = 1;
        pthread_mutex_unlock(&months_lock);
    }
    return true;
}

/* ---- one transaction ---- */

/* The state of one attempt at a group. */
struct attempt {
    struct db_conn *c;
    struct db_order **orders;
    enum db_ingest_result *results;
    size_t n;
    bool *first;    /* first[i]: orders[i] is the first of its key in the group */
    bool *inserted; /* inserted[i]: the gate took orders[i] */
    size_t *by_key; /* indexes of orders sorted by (merchant_id, order_id, position) */
    bool *pii_stored; /* pii_stored[i]: orders[i]'s PII went into order_pii */
    bool copy_keys;   /* new keys looked up and copied in (copy_gate), not through run_gate */
    bool key_raced;   /* copying them met a key stored meanwhile: try again with run_gate */
};

static int compare_keys(int64_t ma, const char *oa, int64_t mb, const char *ob)
{
    if (ma != mb)
        return ma < mb ? -1 : 1;
    return strcmp(oa, ob);
}

static struct db_order **sort_orders; /* qsort has no context argument; set under sort_lock */
static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;

static int compare_positions(const void *pa, const void *pb)
{
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
    int c = compare_keys(sort_orders[a]->merchant_id, sort_orders[a]->order_id,
                         sort_orders[b]->merchant_id, sort_orders[b]->order_id);
    return c ? c : (a > b) - (a < b);
}

/* Sorts the group by key so that repeats of a key (and lookups by key) cost O(log n). */
static void index_by_key(struct attempt *t)
{
    for (size_t i = 0; i < t->n; i++)
        t->by_key[i] = i;
    pthread_mutex_lock(&sort_lock);
    sort_orders = t->orders;
    qsort(t->by_key, t->n, sizeof(*t->by_key), compare_positions);
    pthread_mutex_unlock(&sort_lock);
    for (size_t k = 0; k < t->n; k++) {
        const struct db_order *o = t->orders[t->by_key[k]];
        const struct db_order *prev = k ? t->orders[t->by_key[k - 1]] : NULL;
        t->first[t->by_key[k]] =
            !prev || compare_keys(prev->merchant_id, prev->order_id, o->merchant_id,
                                  o->order_id) != 0;
    }
}

/* The position in by_key of the first order with this key, or t->n. */
static size_t find_key(const struct attempt *t, int64_t merchant_id, const char *order_id)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct db_order *o = t->orders[t->by_key[mid]];
        if (compare_keys(o->merchant_id, o->order_id, merchant_id, order_id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == t->n)
        return t->n;
    const struct db_order *o = t->orders[t->by_key[lo]];
    return compare_keys(o->merchant_id, o->order_id, merchant_id, order_id) == 0 ? lo : t->n;
}

/* Holds off a rebuild of these merchants' rollups until this transaction ends. */
static PGresult *lock_merchants(struct attempt *t)
{
    struct params p;
    params_begin(&p, 1);
    for (size_t i = 0; i < t->n; i++)
        array_int(&p.cols[0], t->orders[i]->merchant_id);
    PGresult *r = db_exec(t->c, DB_MERCHANT_WRITE_LOCK, params_end(&p));
    params_free(&p);
    return r;
}

/* Takes the keys in key order: the index is then filled left to right, and every writer
 * waits for another's keys in one order, which cannot deadlock. */
static PGresult *run_gate(struct attempt *t)
{
    struct params p;
    params_begin(&p, 4);
    for (size_t k = 0; k < t->n; k++) {
        if (!t->first[t->by_key[k]])
            continue;
        struct db_order *o = t->orders[t->by_key[k]];
        array_int(&p.cols[0], o->merchant_id);
        array_text(&p.cols[1], o->order_id);
        array_int(&p.cols[2], o->placed_at_us);
        array_hex(&p.cols[3], o->content_hash, ORDER_HASH_BYTES);
    }
    PGresult *r = db_exec(t->c, DB_INGEST_KEYS, params_end(&p));
    params_free(&p);
    if (db_ok(r, PGRES_TUPLES_OK)) {
        for (int row = 0; row < PQntuples(r); row++) {
            size_t k = find_key(t, strtoll(PQgetvalue(r, row, 0), NULL, 10),
                                PQgetvalue(r, row, 1));
            if (k < t->n)
                t->inserted[t->by_key[k]] = true; /* the first of the key went through */
        }
    }
    return r;
}

/* ---- the inserted orders and their items, with COPY ---- */

/* COPY lets PostgreSQL write many rows per heap page and WAL record instead of one, and it
 * parses no text; the rows are sent in pieces of about this many bytes as they are built. */
enum { COPY_PIECE = 64 * 1024 };

static void order_row(struct buf *b, const struct db_order *o)
{
    copy_row(b, 15);
    copy_int8(b, o->merchant_id);
    copy_timestamptz(b, o->placed_at_us);
    copy_text(b, o->order_id);
    copy_int8(b, o->store_id);
    copy_int2(b, (int16_t)o->channel);
    copy_int2(b, (int16_t)o->fulfillment);
    copy_text(b, o->currency);
    copy_int8(b, o->gross_cents);
    copy_int8(b, o->discount_cents);
    copy_int8(b, o->net_cents);
    copy_int8(b, o->tax_cents);
    copy_int8(b, o->total_cents);
    copy_int8(b, o->items_sold);
    copy_text(b, o->promo_code);
    copy_text(b, o->customer_ref);
}

static void item_rows(struct buf *b, const struct db_order *o)
{
    for (size_t k = 0; k < o->n_items; k++) {
        copy_row(b, 8);
        copy_int8(b, o->merchant_id);
        copy_timestamptz(b, o->placed_at_us);
        copy_text(b, o->order_id);
        copy_int2(b, (int16_t)k);
        copy_text(b, o->items[k].sku);
        copy_text(b, o->items[k].name);
        copy_int8(b, o->items[k].quantity);
        copy_int8(b, o->items[k].unit_price_cents);
    }
}

static void key_row(struct buf *b, const struct db_order *o)
{
    copy_row(b, 4);
    copy_int8(b, o->merchant_id);
    copy_text(b, o->order_id);
    copy_timestamptz(b, o->placed_at_us);
    copy_bytea(b, o->content_hash, ORDER_HASH_BYTES);
}

/* Where a COPY of the inserted orders has got to; rows() writes one order's rows. The orders
 * go in group order, or in key order when by_key is set. */
struct copy_cursor {
    const struct attempt *t;
    void (*rows)(struct buf *b, const struct db_order *o);
    const size_t *by_key;
    size_t next;
};

static bool next_piece(void *ud, struct buf *piece)
{
    struct copy_cursor *cur = ud;
    const struct attempt *t = cur->t;
    if (cur->next == 0)
        copy_begin(piece);
    for (; cur->next < t->n && piece->len < COPY_PIECE; cur->next++) {
        size_t i = cur->by_key ? cur->by_key[cur->next] : cur->next;
        if (t->inserted[i])
            cur->rows(piece, t->orders[i]);
    }
    if (cur->next < t->n)
        return true;
    copy_end(piece);
    return false;
}

static PGresult *copy_orders(const struct attempt *t)
{
    struct copy_cursor cur = {t, order_row, NULL, 0};
    return db_copy_in(t->c,
                      "COPY orders (merchant_id, placed_at, order_id, store_id, channel, "
                      "fulfillment, currency, gross_cents, discount_cents, net_cents, tax_cents, "
                      "total_cents, items_sold, promo_code, customer_ref) "
                      "FROM STDIN (FORMAT binary)",
                      next_piece, &cur);
}

static PGresult *copy_items(const struct attempt *t)
{
    struct copy_cursor cur = {t, item_rows, NULL, 0};
    return db_copy_in(t->c,
                      "COPY order_items (merchant_id, placed_at, order_id, line_no, sku, name, "
                      "quantity, unit_price_cents) FROM STDIN (FORMAT binary)",
                      next_piece, &cur);
}

/* Marks inserted the first order of each key that is not stored yet. */
static PGresult *look_up_keys(struct attempt *t)
{
    struct params p;
    params_begin(&p, 2);
    for (size_t k = 0; k < t->n; k++) {
        size_t i = t->by_key[k];
        if (!t->first[i])
            continue;
        array_int(&p.cols[0], t->orders[i]->merchant_id);
        array_text(&p.cols[1], t->orders[i]->order_id);
        t->inserted[i] = true; /* unless it is found */
    }
    PGresult *r = db_exec(t->c, DB_INGEST_LOOKUP, params_end(&p));
    params_free(&p);
    if (db_ok(r, PGRES_TUPLES_OK)) {
        for (int row = 0; row < PQntuples(r); row++) {
            size_t k = find_key(t, strtoll(PQgetvalue(r, row, 0), NULL, 10),
                                PQgetvalue(r, row, 1));
            if (k < t->n)
                t->inserted[t->by_key[k]] = false;
        }
    }
    return r;
}

static PGresult *copy_new_keys(const struct attempt *t)
{
    struct copy_cursor cur = {t, key_row, t->by_key, 0};
    return db_copy_in(t->c,
                      "COPY order_keys (merchant_id, order_id, placed_at, content_hash) "
                      "FROM STDIN (FORMAT binary)",
                      next_piece, &cur);
}

/* One rollup delta: the key, then the figures. */
struct delta {
    int64_t merchant_id, bucket_s, store_id;
    int channel, fulfillment;
    int64_t v[8]; /* orders, cancelled, items_sold, gross, discount, net, tax, total */
};

static int compare_delta(const void *pa, const void *pb)
{
    const struct delta *a = pa, *b = pb;
    if (a->merchant_id != b->merchant_id)
        return a->merchant_id < b->merchant_id ? -1 : 1;
    if (a->bucket_s != b->bucket_s)
        return a->bucket_s < b->bucket_s ? -1 : 1;
    if (a->store_id != b->store_id)
        return a->store_id < b->store_id ? -1 : 1;
    if (a->channel != b->channel)
        return a->channel - b->channel;
    return a->fulfillment - b->fulfillment;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* The inserted orders' deltas, merged per key and sorted; returns the count. */
static size_t build_deltas(struct attempt *t, struct delta *d)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (!t->inserted[i])
            continue;
        struct db_order *o = t->orders[i];
        d[n] = (struct delta){
            .merchant_id = o->merchant_id,
            .bucket_s = floor_div(o->placed_at_us, 1000000LL * ROLLUP_GRAIN_S) * ROLLUP_GRAIN_S,
            .store_id = o->store_id,
            .channel = o->channel,
            .fulfillment = o->fulfillment,
            .v = {1, 0, o->items_sold, o->gross_cents, o->discount_cents, o->net_cents,
                  o->tax_cents, o->total_cents},
        };
        n++;
    }
    qsort(d, n, sizeof(*d), compare_delta);
    size_t merged = 0;
    for (size_t i = 0; i < n; i++) {
        if (merged > 0 && compare_delta(&d[merged - 1], &d[i]) == 0) {
            for (int k = 0; k < 8; k++)
                d[merged - 1].v[k] += d[i].v[k];
        } else {
            d[merged++] = d[i];
        }
    }
    return merged;
}

static PGresult *upsert_rollups(struct attempt *t)
{
    struct delta *d = xmalloc((t->n ? t->n : 1) * sizeof(*d));
    size_t n = build_deltas(t, d);
    struct params p;
    params_begin(&p, 13);
    for (size_t i = 0; i < n; i++) {
        array_int(&p.cols[0], d[i].merchant_id);
        array_int(&p.cols[1], d[i].bucket_s);
        array_int(&p.cols[2], d[i].store_id);
        array_int(&p.cols[3], d[i].channel);
        array_int(&p.cols[4], d[i].fulfillment);
        for (int k = 0; k < 8; k++)
            array_int(&p.cols[5 + k], d[i].v[k]);
    }
    free(d);
    PGresult *r = db_exec(t->c, DB_INGEST_ROLLUP, params_end(&p));
    params_free(&p);
    return r;
}

static int compare_i64(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return (a > b) - (a < b);
}

/* Bumps the data version of every merchant with an inserted order, in id order. */
static PGresult *bump_versions(struct attempt *t)
{
    int64_t *ids = xmalloc((t->n ? t->n : 1) * sizeof(*ids));
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->inserted[i])
            ids[n++] = t->orders[i]->merchant_id;
    qsort(ids, n, sizeof(*ids), compare_i64);
    struct params p;
    params_begin(&p, 1);
    for (size_t i = 0; i < n; i++)
        if (i == 0 || ids[i] != ids[i - 1])
            array_int(&p.cols[0], ids[i]);
    free(ids);
    PGresult *r = db_exec(t->c, DB_INGEST_BUMP, params_end(&p));
    params_free(&p);
    return r;
}

static bool hash_matches(const struct db_order *o, const char *stored_hex)
{
    char mine[2 * ORDER_HASH_BYTES + 1];
    hex_encode(mine, o->content_hash, ORDER_HASH_BYTES);
    return strcmp(mine, stored_hex) == 0;
}

/* Compares the stored hash of every order not inserted with its own. */
static PGresult *resolve_existing(struct attempt *t)
{
    struct params p;
    params_begin(&p, 2);
    size_t wanted = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->inserted[i])
            continue;
        array_int(&p.cols[0], t->orders[i]->merchant_id);
        array_text(&p.cols[1], t->orders[i]->order_id);
        wanted++;
    }
    PGresult *r = wanted ? db_exec(t->c, DB_INGEST_LOOKUP, params_end(&p)) : NULL;
    params_free(&p);
    if (!r || !db_ok(r, PGRES_TUPLES_OK))
        return r;
    for (int row = 0; row < PQntuples(r); row++) {
        int64_t mid = strtoll(PQgetvalue(r, row, 0), NULL, 10);
        const char *oid = PQgetvalue(r, row, 1), *stored = PQgetvalue(r, row, 2);
        for (size_t k = find_key(t, mid, oid); k < t->n; k++) {
            size_t i = t->by_key[k];
            if (compare_keys(t->orders[i]->merchant_id, t->orders[i]->order_id, mid, oid) != 0)
                break;
            if (!t->inserted[i])
                t->results[i] = hash_matches(t->orders[i], stored) ? INGEST_DUPLICATE
                                                                   : INGEST_CONFLICT;
        }
    }
    return r;
}

static void record_commit(struct attempt *t, const PGresult *bump, struct db_ingest_commit *out)
{
    int rows = PQntuples(bump);
    const char *created = rows > 0 ? PQgetvalue(bump, 0, 2) : NULL;
    out->merchant_ids = xrealloc(out->merchant_ids, (out->n_merchants + (size_t)rows + 1) *
                                                        sizeof(*out->merchant_ids));
    out->versions =
        xrealloc(out->versions, (out->n_merchants + (size_t)rows + 1) * sizeof(*out->versions));
    for (int row = 0; row < rows; row++) {
        out->merchant_ids[out->n_merchants] = strtoll(PQgetvalue(bump, row, 0), NULL, 10);
        out->versions[out->n_merchants] = strtoll(PQgetvalue(bump, row, 1), NULL, 10);
        out->n_merchants++;
    }
    for (size_t i = 0; i < t->n; i++)
        if (t->inserted[i] && created)
            snprintf(t->orders[i]->created_at, sizeof(t->orders[i]->created_at), "%s", created);
}

/* Runs one statement; false (and *failed set) when it did not succeed. */
static bool step(struct attempt *t, PGresult *r, ExecStatusType want, enum db_status *failed)
{
    if (!r)
        return true;
    bool ok = db_ok(r, want);
    if (!ok) {
        if (strcmp(db_sqlstate(r), "23514") == 0) /* no partition of relation found for row */
            atomic_store(&partition_missing, true);
        *failed = db_failure(t->c, r);
    }
    PQclear(r);
    return ok;
}

/* ---- product and promotion rollups ---- */

static int64_t bucket_of(int64_t placed_at_us)
{
    return floor_div(placed_at_us, 1000000LL * ROLLUP_GRAIN_S) * ROLLUP_GRAIN_S;
}

static int compare_merchant_bucket(int64_t ma, int64_t ba, int64_t mb, int64_t bb)
{
    if (ma != mb)
        return ma < mb ? -1 : 1;
    return (ba > bb) - (ba < bb);
}

/* One product rollup delta: (merchant, bucket, sku), then the figures. */
struct product_delta {
    int64_t merchant_id, bucket_s;
    const char *sku;
    int64_t quantity, net_cents;
};

static int compare_product_delta(const void *pa, const void *pb)
{
    const struct product_delta *a = pa, *b = pb;
    int c = compare_merchant_bucket(a->merchant_id, a->bucket_s, b->merchant_id, b->bucket_s);
    return c ? c : strcmp(a->sku, b->sku);
}

/* One promotion rollup delta: (merchant, bucket, code), then the figures. */
struct promo_delta {
    int64_t merchant_id, bucket_s;
    const char *code;
    int64_t orders, discount_cents, net_cents;
};

static int compare_promo_delta(const void *pa, const void *pb)
{
    const struct promo_delta *a = pa, *b = pb;
    int c = compare_merchant_bucket(a->merchant_id, a->bucket_s, b->merchant_id, b->bucket_s);
    return c ? c : strcmp(a->code, b->code);
}

/* Sorts deltas by key and merges those with equal keys (add adds b's figures to a); returns
 * how many are left. Upserted in this order, rows are locked in one order by every writer. */
static size_t merge_sorted(void *base, size_t n, size_t size,
                           int (*compare)(const void *, const void *),
                           void (*add)(void *a, const void *b))
{
    char *d = base;
    qsort(d, n, size, compare);
    size_t merged = 0;
    for (size_t i = 0; i < n; i++) {
        if (merged > 0 && compare(d + (merged - 1) * size, d + i * size) == 0)
            add(d + (merged - 1) * size, d + i * size);
        else if (merged++ != i)
            memcpy(d + (merged - 1) * size, d + i * size, size);
    }
    return merged;
}

static void add_product(void *pa, const void *pb)
{
    struct product_delta *a = pa;
    const struct product_delta *b = pb;
    a->quantity += b->quantity;
    a->net_cents += b->net_cents;
}

static void add_promo(void *pa, const void *pb)
{
    struct promo_delta *a = pa;
    const struct promo_delta *b = pb;
    a->orders += b->orders;
    a->discount_cents += b->discount_cents;
    a->net_cents += b->net_cents;
}

/* Every item of orders[0..n) as a delta (its net: the order's net spread over its items by
 * db_allocate_net), times sign, merged per key and sorted; *count is how many. False when an
 * order's amounts cannot be spread (never for a validated order). */
static bool product_deltas(struct db_order *const *orders, size_t n, int sign,
                           struct product_delta **out, size_t *count)
{
    size_t items = 0, widest = 1;
    for (size_t i = 0; i < n; i++) {
        items += orders[i]->n_items;
        widest = orders[i]->n_items > widest ? orders[i]->n_items : widest;
    }
    struct product_delta *d = xmalloc((items ? items : 1) * sizeof(*d));
    int64_t *gross = xmalloc(widest * sizeof(*gross)), *share = xmalloc(widest * sizeof(*share));
    bool ok = true;
    size_t k = 0;
    for (size_t i = 0; i < n && ok; i++) {
        const struct db_order *o = orders[i];
        for (size_t j = 0; j < o->n_items; j++)
            gross[j] = o->items[j].quantity * o->items[j].unit_price_cents;
        ok = db_allocate_net(o->net_cents, gross, o->n_items, share);
        for (size_t j = 0; j < o->n_items && ok; j++)
            d[k++] =
                (struct product_delta){o->merchant_id, bucket_of(o->placed_at_us), o->items[j].sku,
                                       sign * o->items[j].quantity, sign * share[j]};
    }
    free(gross);
    free(share);
    *count = ok ? merge_sorted(d, k, sizeof(*d), compare_product_delta, add_product) : 0;
    *out = d;
    return ok;
}

/* The orders with a promo code as deltas, times sign, merged per key and sorted. */
static size_t promo_deltas(struct db_order *const *orders, size_t n, int sign,
                           struct promo_delta **out)
{
    struct promo_delta *d = xmalloc((n ? n : 1) * sizeof(*d));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct db_order *o = orders[i];
        if (o->promo_code)
            d[k++] = (struct promo_delta){
                o->merchant_id, bucket_of(o->placed_at_us), o->promo_code,
                sign,           sign * o->discount_cents,   sign * o->net_cents};
    }
    *out = d;
    return merge_sorted(d, k, sizeof(*d), compare_promo_delta, add_promo);
}

static PGresult *upsert_products(struct db_conn *c, const struct product_delta *d, size_t n)
{
    struct params p;
    params_begin(&p, 5);
    for (size_t i = 0; i < n; i++) {
        array_int(&p.cols[0], d[i].merchant_id);
        array_int(&p.cols[1], d[i].bucket_s);
        array_text(&p.cols[2], d[i].sku);
        array_int(&p.cols[3], d[i].quantity);
        array_int(&p.cols[4], d[i].net_cents);
    }
    PGresult *r = db_exec(c, DB_INGEST_PRODUCTS, params_end(&p));
    params_free(&p);
    return r;
}

static PGresult *upsert_promos(struct db_conn *c, const struct promo_delta *d, size_t n)
{
    struct params p;
    params_begin(&p, 6);
    for (size_t i = 0; i < n; i++) {
        array_int(&p.cols[0], d[i].merchant_id);
        array_int(&p.cols[1], d[i].bucket_s);
        array_text(&p.cols[2], d[i].code);
        array_int(&p.cols[3], d[i].orders);
        array_int(&p.cols[4], d[i].discount_cents);
        array_int(&p.cols[5], d[i].net_cents);
    }
    PGresult *r = db_exec(c, DB_INGEST_PROMOS, params_end(&p));
    params_free(&p);
    return r;
}

/* DB_OK when r succeeded as a command (r is cleared either way). */
static enum db_status command_status(struct db_conn *c, PGresult *r)
{
    enum db_status st = db_ok(r, PGRES_COMMAND_OK) ? DB_OK : db_failure(c, r);
    PQclear(r);
    return st;
}

enum db_status db_ingest_item_rollups(struct db_conn *c, struct db_order *const *orders, size_t n,
                                      int sign)
{
    struct product_delta *products;
    size_t n_products;
    if (!product_deltas(orders, n, sign, &products, &n_products)) {
        free(products);
        log_error("an order's net cannot be spread over its items: no product rollups");
        return DB_ERROR;
    }
    enum db_status st =
        n_products ? command_status(c, upsert_products(c, products, n_products)) : DB_OK;
    free(products);
    struct promo_delta *promos;
    size_t n_promos = promo_deltas(orders, n, sign, &promos);
    if (st == DB_OK && n_promos)
        st = command_status(c, upsert_promos(c, promos, n_promos));
    free(promos);
    return st;
}

/* A candidate for the latest name of a product: one item line of an inserted order. */
struct name_candidate {
    int64_t merchant_id;
    const char *sku, *name, *order_id;
    int64_t placed_at_us;
    int64_t line_no;
};

static int compare_product(const struct name_candidate *a, const struct name_candidate *b)
{
    if (a->merchant_id != b->merchant_id)
        return a->merchant_id < b->merchant_id ? -1 : 1;
    return strcmp(a->sku, b->sku);
}

/* By product, then the winner first: the latest placed_at, then the greatest order_id, then
 * the last line (the order of DB_INGEST_PRODUCT_NAMES' condition). */
static int compare_name_candidate(const void *pa, const void *pb)
{
    const struct name_candidate *a = pa, *b = pb;
    int c = compare_product(a, b);
    if (c)
        return c;
    if (a->placed_at_us != b->placed_at_us)
        return a->placed_at_us > b->placed_at_us ? -1 : 1;
    c = strcmp(b->order_id, a->order_id);
    return c ? c : (b->line_no > a->line_no) - (b->line_no < a->line_no);
}

/* Records each product's name from the inserted order that names it last (see
 * db/migrations/0005): one row per product, in key order. */
static PGresult *upsert_product_names(struct attempt *t)
{
    size_t items = 0;
    for (size_t i = 0; i < t->n; i++)
        items += t->inserted[i] ? t->orders[i]->n_items : 0;
    struct name_candidate *cands = xmalloc((items ? items : 1) * sizeof(*cands));
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++) {
        const struct db_order *o = t->orders[i];
        for (size_t j = 0; t->inserted[i] && j < o->n_items; j++)
            cands[k++] = (struct name_candidate){o->merchant_id, o->items[j].sku, o->items[j].name,
                                                 o->order_id,    o->placed_at_us, (int64_t)j};
    }
    qsort(cands, k, sizeof(*cands), compare_name_candidate);
    struct params p;
    params_begin(&p, 6);
    for (size_t i = 0; i < k; i++) {
        if (i > 0 && compare_product(&cands[i - 1], &cands[i]) == 0)
            continue; /* not the winner of its product */
        array_int(&p.cols[0], cands[i].merchant_id);
        array_text(&p.cols[1], cands[i].sku);
        array_text(&p.cols[2], cands[i].name);
        array_int(&p.cols[3], cands[i].placed_at_us);
        array_text(&p.cols[4], cands[i].order_id);
        array_int(&p.cols[5], cands[i].line_no);
    }
    free(cands);
    PGresult *r = db_exec(t->c, DB_INGEST_PRODUCT_NAMES, params_end(&p));
    params_free(&p);
    return r;
}

/* The product and promotion rollups and the product names of the inserted orders. */
static bool rollup_items(struct attempt *t, enum db_status *failed)
{
    struct db_order **inserted = xmalloc(t->n * sizeof(*inserted));
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->inserted[i])
            inserted[n++] = t->orders[i];
    enum db_status st = db_ingest_item_rollups(t->c, inserted, n, 1);
    free(inserted);
    if (st != DB_OK) {
        *failed = st;
        return false;
    }
    return step(t, upsert_product_names(t), PGRES_COMMAND_OK, failed);
}

/* ---- delivery rollups ---- */

struct db_delivery_delta db_delivery_delta_of(int64_t merchant_id, int64_t placed_at_us,
                                              int64_t store_id, int channel)
{
    return (struct db_delivery_delta){.merchant_id = merchant_id,
                                      .bucket_s = bucket_of(placed_at_us),
                                      .store_id = store_id,
                                      .channel = channel};
}

static int compare_delivery_delta(const void *pa, const void *pb)
{
    const struct db_delivery_delta *a = pa, *b = pb;
    int c = compare_merchant_bucket(a->merchant_id, a->bucket_s, b->merchant_id, b->bucket_s);
    if (c)
        return c;
    if (a->store_id != b->store_id)
        return a->store_id < b->store_id ? -1 : 1;
    return (a->channel > b->channel) - (a->channel < b->channel);
}

static void add_delivery(void *pa, const void *pb)
{
    struct db_delivery_delta *a = pa;
    const struct db_delivery_delta *b = pb;
    a->deliveries += b->deliveries;
    a->delivered += b->delivered;
    a->failed += b->failed;
    a->delivered_us += b->delivered_us;
}

static bool changes_nothing(const struct db_delivery_delta *d)
{
    return !d->deliveries && !d->delivered && !d->failed && !d->delivered_us;
}

enum db_status db_ingest_delivery_rollups(struct db_conn *c, struct db_delivery_delta *d,
                                          size_t n)
{
    n = merge_sorted(d, n, sizeof(*d), compare_delivery_delta, add_delivery);
    struct params p;
    params_begin(&p, 8);
    size_t rows = 0;
    for (size_t i = 0; i < n; i++) {
        if (changes_nothing(&d[i]))
            continue;
        array_int(&p.cols[0], d[i].merchant_id);
        array_int(&p.cols[1], d[i].bucket_s);
        array_int(&p.cols[2], d[i].store_id);
        array_int(&p.cols[3], d[i].channel);
        array_int(&p.cols[4], d[i].deliveries);
        array_int(&p.cols[5], d[i].delivered);
        array_int(&p.cols[6], d[i].failed);
        array_int(&p.cols[7], d[i].delivered_us);
        rows++;
    }
    enum db_status st =
        rows ? command_status(c, db_exec(c, DB_INGEST_DELIVERIES, params_end(&p))) : DB_OK;
    params_free(&p);
    return st;
}

/* Each inserted delivery order counts once in its delivery rollup row (no state yet). */
static bool rollup_deliveries(struct attempt *t, enum db_status *failed)
{
    struct db_delivery_delta *d = xmalloc((t->n ? t->n : 1) * sizeof(*d));
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++) {
        const struct db_order *o = t->orders[i];
        if (!t->inserted[i] || o->fulfillment != FULFILLMENT_DELIVERY)
            continue;
        d[n] = db_delivery_delta_of(o->merchant_id, o->placed_at_us, o->store_id, o->channel);
        d[n++].deliveries = 1;
    }
    enum db_status st = db_ingest_delivery_rollups(t->c, d, n);
    free(d);
    if (st != DB_OK)
        *failed = st;
    return st == DB_OK;
}

/* ---- customers' personal data ---- */

/* A customer with PII among the inserted orders, and its data key once derived. */
struct pii_customer {
    int64_t merchant_id;
    const char *ref;
    bool usable; /* key holds its data key: not erased, and its master key id is loaded */
    uint8_t key[CRYPTO_KEY_BYTES];
};

static int compare_customers(const void *pa, const void *pb)
{
    const struct pii_customer *a = pa, *b = pb;
    if (a->merchant_id != b->merchant_id)
        return a->merchant_id < b->merchant_id ? -1 : 1;
    return strcmp(a->ref, b->ref);
}

static bool has_pii(const struct attempt *t, size_t i)
{
    return t->inserted[i] && t->orders[i]->pii && t->orders[i]->customer_ref;
}

/* The distinct customers of the inserted orders with PII, sorted (the lock order); returns
 * how many. */
static size_t pii_customers(const struct attempt *t, struct pii_customer *out)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        if (has_pii(t, i))
            out[n++] = (struct pii_customer){.merchant_id = t->orders[i]->merchant_id,
                                             .ref = t->orders[i]->customer_ref};
    qsort(out, n, sizeof(*out), compare_customers);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++)
        if (distinct == 0 || compare_customers(&out[distinct - 1], &out[i]) != 0)
            out[distinct++] = out[i];
    return distinct;
}

static struct pii_customer *find_customer(struct pii_customer *cs, size_t n, int64_t merchant_id,
                                          const char *ref)
{
    struct pii_customer key = {.merchant_id = merchant_id, .ref = ref};
    return bsearch(&key, cs, n, sizeof(*cs), compare_customers);
}

/* Gives every customer a row with a fresh random secret unless it has one. */
static bool ensure_customers(struct attempt *t, const struct pii_customer *cs, size_t n,
                             const char *key_id, enum db_status *failed)
{
    struct params p;
    params_begin(&p, 3);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        uint8_t secret[CRYPTO_SECRET_BYTES];
        ok = crypto_random(secret, sizeof(secret));
        array_int(&p.cols[0], cs[i].merchant_id);
        array_text(&p.cols[1], cs[i].ref);
        array_hex(&p.cols[2], secret, sizeof(secret));
        crypto_wipe(secret, sizeof(secret));
    }
    const char *const *cols = params_end(&p);
    const char *params[] = {cols[0], cols[1], cols[2], key_id};
    if (!ok) {
        log_error("the CSPRNG failed: no customer secret");
        *failed = DB_ERROR;
    } else {
        ok = step(t, db_exec(t->c, DB_PII_CUSTOMERS_ENSURE, params), PGRES_COMMAND_OK, failed);
    }
    crypto_wipe(p.cols[2].data, p.cols[2].len);
    params_free(&p);
    return ok;
}

/* Share-locks the customers' rows and derives the data key of each one that has a secret. */
static bool derive_keys(struct attempt *t, struct pii_customer *cs, size_t n,
                        enum db_status *failed)
{
    struct params p;
    params_begin(&p, 2);
    for (size_t i = 0; i < n; i++) {
        array_int(&p.cols[0], cs[i].merchant_id);
        array_text(&p.cols[1], cs[i].ref);
    }
    PGresult *r = db_exec(t->c, DB_PII_CUSTOMERS_LOCK, params_end(&p));
    params_free(&p);
    bool ok = db_ok(r, PGRES_TUPLES_OK);
    if (!ok)
        *failed = db_failure(t->c, r);
    for (int row = 0; ok && row < PQntuples(r); row++) {
        struct pii_customer *c =
            find_customer(cs, n, strtoll(PQgetvalue(r, row, 0), NULL, 10), PQgetvalue(r, row, 1));
        if (!c || PQgetisnull(r, row, 3))
            continue; /* erased: its new orders keep no PII either */
        const char *key_id = PQgetvalue(r, row, 2);
        c->usable = db_customer_data_key(key_id, PQgetvalue(r, row, 3), c->key);
        if (!c->usable)
            log_warn("a customer of merchant %lld has a secret under master key id \"%s\", "
                     "which is not loaded: personal data of its new orders is not stored",
                     (long long)c->merchant_id, key_id);
    }
    PQclear(r);
    return ok;
}

/* Seals the PII of every inserted order whose customer has a usable key into order_pii. */
static bool insert_pii(struct attempt *t, struct pii_customer *cs, size_t n, enum db_status *failed)
{
    struct params p;
    params_begin(&p, 5);
    size_t rows = 0;
    bool ok = true;
    for (size_t i = 0; i < t->n && ok; i++) {
        struct db_order *o = t->orders[i];
        struct pii_customer *c =
            has_pii(t, i) ? find_customer(cs, n, o->merchant_id, o->customer_ref) : NULL;
        if (!c || !c->usable)
            continue;
        struct db_pii_sealed sealed;
        ok = db_pii_seal(c->key, o->merchant_id, o->order_id, o->customer_ref, o->pii, &sealed);
        if (!ok)
            break;
        array_int(&p.cols[0], o->merchant_id);
        array_text(&p.cols[1], o->order_id);
        array_text(&p.cols[2], o->customer_ref);
        array_hex(&p.cols[3], sealed.nonce, sizeof(sealed.nonce));
        array_hex(&p.cols[4], sealed.ct, sealed.ct_len);
        free(sealed.ct);
        t->pii_stored[i] = true;
        rows++;
    }
    if (!ok) {
        log_error("sealing personal data failed (OpenSSL)");
        *failed = DB_ERROR;
    } else if (rows) {
        ok = step(t, db_exec(t->c, DB_PII_INSERT, params_end(&p)), PGRES_COMMAND_OK, failed);
    }
    params_free(&p);
    return ok;
}

/* Stores the PII of the inserted orders, encrypted under their customers' keys (DESIGN.md
 * decision 6): three statements for the whole group, whatever its size. */
static bool store_pii(struct attempt *t, enum db_status *failed)
{
    size_t with_pii = 0;
    for (size_t i = 0; i < t->n; i++)
        with_pii += has_pii(t, i);
    if (with_pii == 0)
        return true;
    const struct crypto_keyring *keys = crypto_pii_keyring();
    if (!keys) {
        log_error("orders carry personal data but no PII master key is loaded");
        *failed = DB_ERROR;
        return false;
    }
    struct pii_customer *cs = xcalloc(with_pii, sizeof(*cs));
    size_t n = pii_customers(t, cs);
    bool ok = ensure_customers(t, cs, n, crypto_keyring_key_id(keys), failed) &&
              derive_keys(t, cs, n, failed) && insert_pii(t, cs, n, failed);
    crypto_wipe(cs, with_pii * sizeof(*cs));
    free(cs);
    return ok;
}

/* The gate of a large group, cheaper than run_gate's INSERT ... ON CONFLICT: the keys already
 * stored are looked up, and the new ones copied in, in key order. A key another writer stores
 * meanwhile fails the COPY (unique violation: key_raced), and the group is tried again through
 * run_gate. */
static bool copy_gate(struct attempt *t, enum db_status *failed)
{
    if (!step(t, look_up_keys(t), PGRES_TUPLES_OK, failed))
        return false;
    bool any = false;
    for (size_t i = 0; i < t->n && !any; i++)
        any = t->inserted[i];
    if (!any) /* every key is stored already (an upload sent again) */
        return true;
    PGresult *r = copy_new_keys(t);
    t->key_raced = !db_ok(r, PGRES_COMMAND_OK) && strcmp(db_sqlstate(r), "23505") == 0;
    return step(t, r, PGRES_COMMAND_OK, failed);
}

/* One transaction over the whole group: DB_OK, or why it failed (nothing committed unless the
 * commit itself is what failed, which counts as unavailable: the outcome is unknown). */
static enum db_status ingest_once(struct attempt *t, struct db_ingest_commit *commit)
{
    enum db_status failed = DB_OK;
    memset(t->inserted, 0, t->n * sizeof(*t->inserted));
    memset(t->pii_stored, 0, t->n * sizeof(*t->pii_stored));
    if (!step(t, db_exec_simple(t->c, "BEGIN"), PGRES_COMMAND_OK, &failed))
        return failed;
    bool ok = step(t, lock_merchants(t), PGRES_TUPLES_OK, &failed) &&
              (t->copy_keys ? copy_gate(t, &failed)
                            : step(t, run_gate(t), PGRES_TUPLES_OK, &failed));
    size_t inserted = 0;
    for (size_t i = 0; i < t->n; i++)
        inserted += t->inserted[i];
    PGresult *bump = NULL;
    if (ok && inserted) {
        ok = step(t, copy_orders(t), PGRES_COMMAND_OK, &failed) &&
             step(t, copy_items(t), PGRES_COMMAND_OK, &failed) && store_pii(t, &failed) &&
             step(t, upsert_rollups(t), PGRES_COMMAND_OK, &failed) && rollup_items(t, &failed) &&
             rollup_deliveries(t, &failed);
        if (ok) {
            bump = bump_versions(t);
            ok = db_ok(bump, PGRES_TUPLES_OK);
            if (!ok)
                failed = db_failure(t->c, bump);
        }
    }
    ok = ok && step(t, resolve_existing(t), PGRES_TUPLES_OK, &failed);
    if (!ok) {
        PQclear(bump);
        PQclear(db_exec_simple(t->c, "ROLLBACK"));
        return failed;
    }
    if (!step(t, db_exec_simple(t->c, "COMMIT"), PGRES_COMMAND_OK, &failed)) {
        PQclear(bump);
        return DB_UNAVAILABLE;
    }
    for (size_t i = 0; i < t->n; i++) {
        if (t->inserted[i]) {
            t->results[i] = INGEST_INSERTED;
            t->orders[i]->pii_stored = t->pii_stored[i];
        }
    }
    if (bump)
        record_commit(t, bump, commit);
    PQclear(bump);
    return DB_OK;
}

static void ingest_group(struct db_conn *c, struct db_order **orders, size_t n,
                         enum db_ingest_result *results, struct db_ingest_commit *commit)
{
    struct attempt t = {c,
                        orders,
                        results,
                        n,
                        xcalloc(n, sizeof(bool)),
                        xcalloc(n, sizeof(bool)),
                        xcalloc(n, sizeof(size_t)),
                        xcalloc(n, sizeof(bool))};
    index_by_key(&t);
    t.copy_keys = n >= COPY_KEYS_MIN;
    enum db_status st = ingest_once(&t, commit);
    if (st != DB_OK && t.key_raced) {
        t.copy_keys = false;
        st = ingest_once(&t, commit);
    }
    free(t.first);
    free(t.inserted);
    free(t.by_key);
    free(t.pii_stored);
    if (st == DB_OK)
        return;
    if (st == DB_UNAVAILABLE || n == 1) {
        for (size_t i = 0; i < n; i++)
            results[i] = st == DB_UNAVAILABLE ? INGEST_UNAVAILABLE : INGEST_FAILED;
        return;
    }
    /* A data error: split so that the bad order fails alone and its neighbours are stored. */
    ingest_group(c, orders, n / 2, results, commit);
    ingest_group(c, orders + n / 2, n - n / 2, results + n / 2, commit);
}

/* Forgets which partitions exist and tries the orders that failed once more. */
static void retry_without_partitions(struct db_conn *c, struct db_order **orders, size_t n,
                                     enum db_ingest_result *results,
                                     struct db_ingest_commit *commit)
{
    pthread_mutex_lock(&months_lock);
    memset(months_ready, 0, sizeof(months_ready));
    pthread_mutex_unlock(&months_lock);
    struct db_order **failed = xmalloc(n * sizeof(*failed));
    size_t *where = xmalloc(n * sizeof(*where));
    enum db_ingest_result *again = xmalloc(n * sizeof(*again));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (results[i] == INGEST_FAILED) {
            where[k] = i;
            failed[k++] = orders[i];
        }
    }
    if (k && ensure_partitions(c, failed, k)) {
        ingest_group(c, failed, k, again, commit);
        for (size_t j = 0; j < k; j++)
            results[where[j]] = again[j];
    }
    free(failed);
    free(where);
    free(again);
}

static uint64_t current_lsn(struct db_conn *c)
{
    PGresult *r = db_exec(c, DB_WAL_LSN, NULL);
    uint64_t lsn = db_ok(r, PGRES_TUPLES_OK) ? db_parse_lsn(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    return lsn;
}

void db_ingest(struct db *db, struct db_conn *c, struct db_order **orders, size_t n,
               enum db_ingest_result *results, struct db_ingest_commit *commit)
{
    for (size_t i = 0; i < n; i++)
        results[i] = INGEST_FAILED;
    if (n == 0)
        return;
    if (!ensure_partitions(c, orders, n)) {
        for (size_t i = 0; i < n; i++)
            results[i] = INGEST_UNAVAILABLE;
        return;
    }
    size_t before = commit->n_merchants;
    ingest_group(c, orders, n, results, commit);
    if (atomic_exchange(&partition_missing, false))
        retry_without_partitions(c, orders, n, results, commit);
    if (commit->n_merchants == before)
        return;
    uint64_t lsn = current_lsn(c);
    if (lsn == 0)
        log_warn("committed, but the WAL position is unknown: reads may lag for a moment");
    if (lsn > commit->lsn)
        commit->lsn = lsn;
    for (size_t i = before; i < commit->n_merchants; i++)
        db_note_write_lsn(db, commit->merchant_ids[i], lsn);
}

void db_ingest_commit_free(struct db_ingest_commit *commit)
{
    free(commit->merchant_ids);
    free(commit->versions);
    memset(commit, 0, sizeof(*commit));
}
