/*
 * tidelog._stamp: validation, stamping and checksum checks over a whole batch of messages in
 * wire format (protocol reference 3.9, 4.1), one C loop instead of a dozen numpy calls or one
 * Python call per message.
 *
 * This is the optional fast path of tidelog.wire.batch; the numpy path there is the reference
 * and must give byte-identical results. Header layout used here (all little-endian):
 *   0 checksum u64 | 8 id u128 | 24 offset u64 | 32 timestamp u64 | ... | 64 payload, headers
 * The checksum is XXH3-64 (seed 0) of bytes 8..end of the message.
 *
 * Built against the limited API of 3.11 (abi3) so one binary serves later interpreters too.
 * xxhash.h is vendored from xxHash (BSD-2-Clause, see LICENSE-xxhash) and inlined whole, so
 * the module links to nothing.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* xxHash picks SSE2 at compile time on x86-64 (the baseline every such CPU has); its AVX2
   accumulate loop, compiled here for that target alone and chosen at run time, hashes a
   1 KB message about 1.6x as fast (measured in bench/v09_batch_cost.py's machine). */
#include <immintrin.h>
#define XXH_DISPATCH_AVX2 1
#define XXH_TARGET_AVX2 __attribute__((target("avx2")))
#define TIDELOG_HASH_AVX2 1
#endif
#define XXH_INLINE_ALL
#include "xxhash.h"

#ifdef TIDELOG_HASH_AVX2
static int have_avx2 = 0;

__attribute__((target("avx2"))) static XXH64_hash_t hash_long_avx2(const void *input, size_t len) {
    return XXH3_hashLong_64b_internal(input, len, XXH3_kSecret, sizeof(XXH3_kSecret), XXH3_accumulate_avx2,
                                      XXH3_scrambleAcc_avx2);
}
#endif

/* XXH3-64, seed 0: the same value as XXH3_64bits, on the fastest code path this CPU has. */
static inline uint64_t hash64(const uint8_t *input, size_t len) {
#ifdef TIDELOG_HASH_AVX2
    if (len > XXH3_MIDSIZE_MAX && have_avx2) {
        return hash_long_avx2(input, len);
    }
#endif
    return XXH3_64bits(input, len);
}

#define HEADER_BYTES 64
#define CHECKSUM_AT 0
#define ID_AT 8
#define ID_BYTES 16
#define OFFSET_AT 24
#define TIMESTAMP_AT 32
#define CHECKSUMMED_FROM 8
#define USER_HEADERS_LENGTH_AT 48
#define PAYLOAD_LENGTH_AT 52
#define RESERVED_AT 56

#define INDEX_ENTRY_BYTES 16
#define INDEX_OFFSET_AT 0
#define INDEX_POSITION_AT 4
#define INDEX_TIMESTAMP_AT 8

/* Status codes of tidelog.wire.codes.Status that validate() returns; the numbers are the wire
   contract (protocol reference section 5), so they cannot drift from the Python enum. */
#define STATUS_INVALID_MESSAGES_COUNT 4009
#define STATUS_TOO_BIG_USER_HEADERS 4017
#define STATUS_TOO_BIG_MESSAGE_PAYLOAD 4022
#define STATUS_NON_ZERO_OFFSET 4031
#define STATUS_NON_ZERO_TIMESTAMP 4032
#define STATUS_MISSING_INDEX 4033
#define STATUS_INVALID_INDEXES_BYTE_SIZE 4034
#define STATUS_INVALID_MESSAGES_SIZE 4036
#define STATUS_INVALID_RESERVED_FIELD 4101

/* Under this many messages the loop takes about a microsecond: handing the GIL to a waiting
   thread (the storage writer) could then stall the event loop for a whole switch interval. */
#define VALIDATE_NOGIL_MIN_COUNT 4096

/* Byte by byte so the wire stays little-endian on any host; compilers fold this to one store. */
static inline void store_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

static inline uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline int id_is_zero(const uint8_t *message) {
    uint64_t lo, hi;
    memcpy(&lo, message + ID_AT, 8);
    memcpy(&hi, message + ID_AT + 8, 8);
    return (lo | hi) == 0;
}

/* A buffer of int64 end positions: one dimension, contiguous, 8-byte signed items. */
static int get_ends(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (*format == '@' || *format == '=' || *format == '<') {
        format++;
    }
    int signed64 = (format[0] == 'q' || format[0] == 'l') && format[1] == '\0';
    if (view->ndim != 1 || view->itemsize != 8 || !signed64) {
        PyErr_SetString(PyExc_ValueError, "ends must be a one-dimensional buffer of int64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/*
 * Every message must hold at least a header and end within the buffer; ends therefore rise by
 * 64 or more each step. Checked before any byte is touched, so bad ends never write anywhere.
 */
static int check_ends(const int64_t *ends, Py_ssize_t count, Py_ssize_t buf_bytes) {
    int64_t previous = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t end = ends[i];
        /* previous <= buf_bytes, so neither the subtraction nor the comparison can overflow. */
        if (end < previous || end - previous < HEADER_BYTES) {
            PyErr_Format(PyExc_ValueError,
                         "message %zd ends at %lld, leaving under %d bytes after %lld",
                         i, (long long)end, HEADER_BYTES, (long long)previous);
            return -1;
        }
        if (end > (int64_t)buf_bytes) {
            PyErr_Format(PyExc_ValueError, "message %zd ends at %lld, past the buffer's %zd bytes",
                         i, (long long)end, buf_bytes);
            return -1;
        }
        previous = end;
    }
    return 0;
}

/* A writable contiguous buffer; a read-only one is a caller's mistake, reported as such. */
static int get_writable(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) == 0) {
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "buf must be a writable contiguous buffer");
    }
    return -1;
}

/*
 * The (buf, ends) pair every kernel takes: buf (writable when asked) and the int64 end
 * positions, checked against each other. On failure both are released and -1 returned.
 */
static int get_messages(PyObject *buf_obj, PyObject *ends_obj, int writable, Py_buffer *buf,
                        Py_buffer *ends, Py_ssize_t *count) {
    int got = writable ? get_writable(buf_obj, buf) : PyObject_GetBuffer(buf_obj, buf, PyBUF_SIMPLE);
    if (got < 0) {
        return -1;
    }
    if (get_ends(ends_obj, ends) < 0) {
        PyBuffer_Release(buf);
        return -1;
    }
    *count = ends->len / 8;
    if (check_ends((const int64_t *)ends->buf, *count, buf->len) < 0) {
        PyBuffer_Release(ends);
        PyBuffer_Release(buf);
        return -1;
    }
    return 0;
}

/*
 * The (buf, starts, ends, out) quadruple of the kernels that read spans of buf and write one
 * result per span or a converted copy into out. On failure all are released and -1 returned.
 */
static int get_spans(PyObject *buf_obj, PyObject *starts_obj, PyObject *ends_obj, PyObject *out_obj,
                     Py_buffer *buf, Py_buffer *starts, Py_buffer *ends, Py_buffer *out) {
    if (PyObject_GetBuffer(buf_obj, buf, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (get_ends(starts_obj, starts) < 0) {
        PyBuffer_Release(buf);
        return -1;
    }
    if (get_ends(ends_obj, ends) < 0) {
        PyBuffer_Release(starts);
        PyBuffer_Release(buf);
        return -1;
    }
    if (get_writable(out_obj, out) < 0) {
        PyBuffer_Release(ends);
        PyBuffer_Release(starts);
        PyBuffer_Release(buf);
        return -1;
    }
    return 0;
}

static void release_spans(Py_buffer *buf, Py_buffer *starts, Py_buffer *ends, Py_buffer *out) {
    PyBuffer_Release(out);
    PyBuffer_Release(ends);
    PyBuffer_Release(starts);
    PyBuffer_Release(buf);
}

static int as_u64(PyObject *obj, const char *name, uint64_t *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must fit in an unsigned 64-bit integer", name);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* A random UUIDv4 from 16 random bytes: RFC 9562 version 4 and variant bits, at the same byte
   positions as the numpy path (the 16 bytes are then read as a little-endian u128). */
static inline void set_uuid4(uint8_t *id, const uint8_t *random16) {
    memcpy(id, random16, ID_BYTES);
    id[6] = (uint8_t)((id[6] & 0x0F) | 0x40);
    id[8] = (uint8_t)((id[8] & 0x3F) | 0x80);
}

static Py_ssize_t count_zero_ids(const uint8_t *base, const int64_t *ends, Py_ssize_t count) {
    Py_ssize_t zeros = 0;
    int64_t start = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        zeros += id_is_zero(base + start);
        start = ends[i];
    }
    return zeros;
}

PyDoc_STRVAR(zero_ids_doc,
"zero_ids(buf, ends) -> int\n\n"
"How many messages carry id 0, i.e. how many 16-byte random blocks stamp() will need.");

static PyObject *zero_ids(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj, *ends_obj;
    if (!PyArg_ParseTuple(args, "OO:zero_ids", &buf_obj, &ends_obj)) {
        return NULL;
    }
    Py_buffer buf, ends;
    Py_ssize_t count;
    if (get_messages(buf_obj, ends_obj, 0, &buf, &ends, &count) < 0) {
        return NULL;
    }
    PyObject *result =
        PyLong_FromSsize_t(count_zero_ids((const uint8_t *)buf.buf, (const int64_t *)ends.buf, count));
    PyBuffer_Release(&ends);
    PyBuffer_Release(&buf);
    return result;
}

PyDoc_STRVAR(stamp_doc,
"stamp(buf, ends, base_offset, timestamp_us, random16) -> None\n\n"
"For message i (ending at ends[i] within the writable buf): write offset base_offset + i and\n"
"the timestamp; where the id is 0, take the next 16 bytes of random16 as a UUIDv4; then write\n"
"XXH3-64 of bytes 8..end as the checksum. random16 holds exactly 16 bytes per zero id\n"
"(see zero_ids), or is None when there are none. Raises ValueError, writing nothing, on bad\n"
"arguments. The GIL is released while stamping.");

static PyObject *stamp(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj, *ends_obj, *base_obj, *timestamp_obj, *random_obj;
    if (!PyArg_ParseTuple(args, "OOOOO:stamp", &buf_obj, &ends_obj, &base_obj, &timestamp_obj,
                          &random_obj)) {
        return NULL;
    }
    uint64_t base_offset, timestamp_us;
    if (as_u64(base_obj, "base_offset", &base_offset) < 0 ||
        as_u64(timestamp_obj, "timestamp_us", &timestamp_us) < 0) {
        return NULL;
    }
    Py_buffer buf, ends, random;
    random.buf = NULL;
    random.len = 0;
    int have_random = 0;
    Py_ssize_t count;
    if (get_messages(buf_obj, ends_obj, 1, &buf, &ends, &count) < 0) {
        return NULL;
    }
    if (random_obj != Py_None) {
        if (PyObject_GetBuffer(random_obj, &random, PyBUF_SIMPLE) < 0) {
            goto fail;
        }
        have_random = 1;
    }

    uint8_t *base = (uint8_t *)buf.buf;
    const int64_t *end_at = (const int64_t *)ends.buf;
    if (count && base_offset > UINT64_MAX - (uint64_t)(count - 1)) {
        PyErr_SetString(PyExc_ValueError, "base_offset + count - 1 overflows 64 bits");
        goto fail;
    }
    Py_ssize_t zeros = count_zero_ids(base, end_at, count);
    if (random.len != 16 * zeros) {
        PyErr_Format(PyExc_ValueError, "random16 holds %zd bytes; %zd zero ids need %zd",
                     random.len, zeros, 16 * zeros);
        goto fail;
    }

    const uint8_t *next_random = (const uint8_t *)random.buf;
    const uint8_t *random_end = next_random + random.len;
    Py_BEGIN_ALLOW_THREADS
    int64_t start = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint8_t *message = base + start;
        int64_t end = end_at[i];
        /* The bound re-check only matters if another thread rewrites ids meanwhile; it keeps
           that race from reading past random16. */
        if (id_is_zero(message) && next_random < random_end) {
            set_uuid4(message + ID_AT, next_random);
            next_random += ID_BYTES;
        }
        store_le64(message + OFFSET_AT, base_offset + (uint64_t)i);
        store_le64(message + TIMESTAMP_AT, timestamp_us);
        /* Last: the checksum covers the fields written above. */
        store_le64(message + CHECKSUM_AT,
                   hash64(message + CHECKSUMMED_FROM, (size_t)(end - start - CHECKSUMMED_FROM)));
        start = end;
    }
    Py_END_ALLOW_THREADS

    if (have_random) {
        PyBuffer_Release(&random);
    }
    PyBuffer_Release(&ends);
    PyBuffer_Release(&buf);
    Py_RETURN_NONE;

fail:
    if (have_random) {
        PyBuffer_Release(&random);
    }
    PyBuffer_Release(&ends);
    PyBuffer_Release(&buf);
    return NULL;
}

PyDoc_STRVAR(checksums_verify_doc,
"checksums_verify(buf, ends) -> int\n\n"
"Index of the first message whose stored checksum differs from XXH3-64 of its bytes 8..end,\n"
"or -1 when all match. The GIL is released while hashing.");

static PyObject *checksums_verify(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj, *ends_obj;
    if (!PyArg_ParseTuple(args, "OO:checksums_verify", &buf_obj, &ends_obj)) {
        return NULL;
    }
    Py_buffer buf, ends;
    Py_ssize_t count;
    if (get_messages(buf_obj, ends_obj, 0, &buf, &ends, &count) < 0) {
        return NULL;
    }
    const uint8_t *base = (const uint8_t *)buf.buf;
    const int64_t *end_at = (const int64_t *)ends.buf;
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS
    int64_t start = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *message = base + start;
        int64_t end = end_at[i];
        uint64_t digest =
            hash64(message + CHECKSUMMED_FROM, (size_t)(end - start - CHECKSUMMED_FROM));
        if (digest != load_le64(message + CHECKSUM_AT)) {
            bad = i;
            break;
        }
        start = end;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&ends);
    PyBuffer_Release(&buf);
    return PyLong_FromSsize_t(bad);
}

/*
 * One pass over the index table that notes every kind of fault at once, because the numpy
 * path checks kind by kind over the whole batch: a non-zero offset in the last entry wins over
 * a bad position in the first. A header is read only where its span holds 64 bytes and ends
 * within the area, so garbage never leads out of bounds; when every span passes those tests,
 * every header has been read, which is exactly when the numpy path gets to its header checks.
 * Writes ends[i] = position i as it goes; returns 0 or the status the numpy path raises.
 */
static int validate_batch(const uint8_t *index, const uint8_t *area, int64_t area_bytes,
                          Py_ssize_t count, uint64_t max_payload, uint64_t max_user_headers,
                          int64_t *ends) {
    uint32_t offsets = 0;
    uint64_t timestamps = 0, reserved = 0;
    int short_span = 0, unfilled = 0, payload_too_big = 0, user_headers_too_big = 0;
    int64_t start = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *entry = index + INDEX_ENTRY_BYTES * i;
        offsets |= load_le32(entry + INDEX_OFFSET_AT);
        timestamps |= load_le64(entry + INDEX_TIMESTAMP_AT);
        int64_t end = (int64_t)load_le32(entry + INDEX_POSITION_AT);
        ends[i] = end;
        /* Both sides fit in 33 bits: no overflow. A falling position makes a negative span. */
        int64_t span = end - start;
        if (span < HEADER_BYTES) {
            short_span = 1;
        } else if (end <= area_bytes) {
            const uint8_t *header = area + start;
            uint64_t user_headers = load_le32(header + USER_HEADERS_LENGTH_AT);
            uint64_t payload = load_le32(header + PAYLOAD_LENGTH_AT);
            unfilled |= (HEADER_BYTES + payload + user_headers) != (uint64_t)span;
            payload_too_big |= payload > max_payload;
            user_headers_too_big |= user_headers > max_user_headers;
            reserved |= load_le64(header + RESERVED_AT);
        }
        start = end;
    }
    /* The order of tidelog.wire.batch.parse_send_batch; see its comments for the reasons. */
    if (offsets) {
        return STATUS_NON_ZERO_OFFSET;
    }
    if (timestamps) {
        return STATUS_NON_ZERO_TIMESTAMP;
    }
    if (short_span) {
        return STATUS_MISSING_INDEX;
    }
    if (start != area_bytes) {
        return STATUS_INVALID_MESSAGES_SIZE;
    }
    if (unfilled) {
        return STATUS_MISSING_INDEX;
    }
    if (payload_too_big) {
        return STATUS_TOO_BIG_MESSAGE_PAYLOAD;
    }
    if (user_headers_too_big) {
        return STATUS_TOO_BIG_USER_HEADERS;
    }
    if (reserved) {
        return STATUS_INVALID_RESERVED_FIELD;
    }
    return 0;
}

static PyObject *status_only(int status) {
    return Py_BuildValue("(iO)", status, Py_None);
}

PyDoc_STRVAR(validate_doc,
"validate(index, messages, count, max_payload, max_user_headers) -> (status, ends)\n\n"
"Check a SendMessages index table (16 bytes per message: offset u32, end position u32,\n"
"timestamp u64) against the messages area it describes, exactly as the numpy path of\n"
"tidelog.wire.batch.parse_send_batch does, in the same order of precedence. Returns\n"
"(0, ends) with ends a bytearray of count native int64 end positions, or (status, None)\n"
"with the status code the numpy path raises. Garbage in gives a status, never a read out\n"
"of bounds. Raises TypeError or ValueError only on arguments of the wrong kind.");

static PyObject *validate(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *index_obj, *messages_obj, *count_obj;
    Py_ssize_t max_payload, max_user_headers;
    if (!PyArg_ParseTuple(args, "OOOnn:validate", &index_obj, &messages_obj, &count_obj,
                          &max_payload, &max_user_headers)) {
        return NULL;
    }
    if (max_payload < 0 || max_user_headers < 0) {
        PyErr_SetString(PyExc_ValueError, "max_payload and max_user_headers must be >= 0");
        return NULL;
    }
    /* Any integer, however large: the numpy path compares Python ints, so a count past 64 bits
       is simply one that no index table can match. */
    PyObject *count_int = PyNumber_Index(count_obj);
    if (count_int == NULL) {
        return NULL;
    }
    int overflow = 0;
    long long count_ll = PyLong_AsLongLongAndOverflow(count_int, &overflow);
    Py_DECREF(count_int);
    if (count_ll == -1 && !overflow && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow < 0 || (!overflow && count_ll <= 0)) {
        return status_only(STATUS_INVALID_MESSAGES_COUNT);
    }

    Py_buffer index, messages;
    if (PyObject_GetBuffer(index_obj, &index, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (overflow > 0 || index.len % INDEX_ENTRY_BYTES != 0 ||
        index.len / INDEX_ENTRY_BYTES != count_ll) {
        PyBuffer_Release(&index);
        return status_only(STATUS_INVALID_INDEXES_BYTE_SIZE);
    }
    if (PyObject_GetBuffer(messages_obj, &messages, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&index);
        return NULL;
    }
    Py_ssize_t count = (Py_ssize_t)count_ll;
    /* count * 8 is half the index table's length: bounded by memory already held. */
    PyObject *ends_obj = PyByteArray_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(int64_t));
    if (ends_obj == NULL) {
        PyBuffer_Release(&messages);
        PyBuffer_Release(&index);
        return NULL;
    }
    int64_t *ends = (int64_t *)PyByteArray_AsString(ends_obj);
    const uint8_t *index_at = (const uint8_t *)index.buf;
    const uint8_t *area = (const uint8_t *)messages.buf;
    int64_t area_bytes = (int64_t)messages.len;
    int status;
    if (count >= VALIDATE_NOGIL_MIN_COUNT) {
        Py_BEGIN_ALLOW_THREADS
        status = validate_batch(index_at, area, area_bytes, count, (uint64_t)max_payload,
                                (uint64_t)max_user_headers, ends);
        Py_END_ALLOW_THREADS
    } else {
        status = validate_batch(index_at, area, area_bytes, count, (uint64_t)max_payload,
                                (uint64_t)max_user_headers, ends);
    }
    PyBuffer_Release(&messages);
    PyBuffer_Release(&index);
    if (status != 0) {
        Py_DECREF(ends_obj);
        return status_only(status);
    }
    return Py_BuildValue("(iN)", 0, ends_obj);
}

PyDoc_STRVAR(digests_doc,
"digests(buf, starts, ends, out) -> None\n\n"
"out[i] = XXH3-64 of buf[starts[i] + 8 : ends[i]] for every i: the checksum rule of 0.8\n"
"messages and of 0.9 frames alike, for spans that need not be back to back (0.9 records\n"
"have batch headers between them). starts and ends are int64 arrays, out a writable uint64\n"
"array of the same length. Every span is bounds-checked before any hashing; the GIL is\n"
"released while hashing.");

static PyObject *digests(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj, *starts_obj, *ends_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOO:digests", &buf_obj, &starts_obj, &ends_obj, &out_obj)) {
        return NULL;
    }
    Py_buffer buf, starts, ends, out;
    if (get_spans(buf_obj, starts_obj, ends_obj, out_obj, &buf, &starts, &ends, &out) < 0) {
        return NULL;
    }
    Py_ssize_t count = ends.len / 8;
    const int64_t *start_at = (const int64_t *)starts.buf;
    const int64_t *end_at = (const int64_t *)ends.buf;
    int ok = starts.len == ends.len && out.len == ends.len;
    for (Py_ssize_t i = 0; ok && i < count; i++) {
        ok = start_at[i] >= 0 && start_at[i] + CHECKSUMMED_FROM <= end_at[i] && end_at[i] <= buf.len;
    }
    if (ok) {
        const uint8_t *base = (const uint8_t *)buf.buf;
        uint8_t *dst = (uint8_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < count; i++) {
            uint64_t digest = hash64(base + start_at[i] + CHECKSUMMED_FROM,
                                          (size_t)(end_at[i] - start_at[i] - CHECKSUMMED_FROM));
            memcpy(dst + 8 * i, &digest, 8); /* native order: out is a uint64 array */
        }
        Py_END_ALLOW_THREADS
    }
    release_spans(&buf, &starts, &ends, &out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "digests: spans out of bounds or lengths differ");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------
 * Conversion between the stored 0.8 messages and 0.9 records (0.9 reference 4.1, 4.2).
 * The numpy code in tidelog.wire.v09.batch is the reference; these give identical bytes.
 * 0.9 batch header: 0 partition_id | 8 base_offset | 16 base_timestamp | 24 origin_timestamp
 * | 32 batch_length | 40 batch_checksum | 48 message_count u32 | 52..256 zero.
 * 0.9 frame header: 0 checksum | 8 id u128 | 24 offset_delta u32 | 28 timestamp_delta u32 |
 * 32 user_headers_length u32 | 36 payload_length u32 | 40 reserved u64 | 48 payload, headers.
 */
#define BATCH_HEADER_BYTES 256
#define FRAME_HEADER_BYTES 48
#define ORIGIN_TIMESTAMP_AT 40
#define STATUS09_INVALID_MESSAGE_TIMESTAMP_DELTA 4038

static inline void store_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

PyDoc_STRVAR(scan_doc,
"scan(buf, max_payload, max_user_headers, expected_first_offset) -> (ends, valid)\n\n"
"Walk stored 0.8 messages from byte 0 as tidelog.wire.batch.scan_messages does without\n"
"checksums: stop at the first message that is incomplete, has out-of-range lengths or a\n"
"non-zero reserved field, or (expected_first_offset not None) an offset other than the\n"
"expected one. Returns the int64 end positions (as bytes) and the valid prefix length.");

static PyObject *scan(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj, *expected_obj;
    unsigned long long max_payload, max_headers;
    if (!PyArg_ParseTuple(args, "OKKO:scan", &buf_obj, &max_payload, &max_headers, &expected_obj)) {
        return NULL;
    }
    uint64_t expected = 0;
    int check_offsets = expected_obj != Py_None;
    if (check_offsets && as_u64(expected_obj, "expected_first_offset", &expected) < 0) {
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(buf_obj, &buf, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *base = (const uint8_t *)buf.buf;
    int64_t total = (int64_t)buf.len;
    /* Every message holds a header, so this bounds the count. */
    Py_ssize_t capacity = (Py_ssize_t)(total / HEADER_BYTES);
    int64_t *ends = PyMem_Malloc(capacity ? (size_t)capacity * 8 : 8);
    if (ends == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = 0;
    int64_t pos = 0;
    while (pos + HEADER_BYTES <= total) {
        const uint8_t *m = base + pos;
        uint64_t user_headers = load_le32(m + USER_HEADERS_LENGTH_AT);
        uint64_t payload = load_le32(m + PAYLOAD_LENGTH_AT);
        if (payload > max_payload || user_headers > max_headers || load_le64(m + RESERVED_AT) != 0) {
            break;
        }
        int64_t end = pos + HEADER_BYTES + (int64_t)payload + (int64_t)user_headers;
        if (end > total) {
            break;
        }
        if (check_offsets) {
            if (load_le64(m + OFFSET_AT) != expected) {
                break;
            }
            expected++;
        }
        ends[count++] = end;
        pos = end;
    }
    PyBuffer_Release(&buf);
    PyObject *out = PyBytes_FromStringAndSize((const char *)ends, count * 8);
    PyMem_Free(ends);
    if (out == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NL)", out, (long long)pos);
}

/* The batch checksum (0.9 reference 4.2) of a record at head whose header fields are written
   and whose frames follow it, converted from the 0.8 messages [i, j) ending at ends (a frame
   is 16 bytes shorter than its message): XXH3 over the fields and the frame checksums. */
static uint64_t record_digest(const uint8_t *head, const int64_t *ends, Py_ssize_t i, Py_ssize_t j) {
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, head, 40);
    XXH3_64bits_update(&state, head + 48, 4);
    int64_t f_at = BATCH_HEADER_BYTES;
    for (Py_ssize_t k = i; k < j; k++) {
        XXH3_64bits_update(&state, head + f_at, 8);
        f_at += ends[k] - (k ? ends[k - 1] : 0) - HEADER_BYTES + FRAME_HEADER_BYTES;
    }
    return XXH3_64bits_digest(&state);
}

PyDoc_STRVAR(to_v09_doc,
"to_v09(buf, ends, partition_id) -> bytearray | int\n\n"
"Stored 0.8 messages (ending at ends) as 0.9 records, one per run of consecutive offsets\n"
"sharing a broker timestamp: what tidelog.wire.v09.batch.v08_to_v09 gives without\n"
"batch_starts. Returns status 4038 instead when a record's origin timestamps spread over\n"
"more than a u32 of microseconds. Raises ValueError on ends that do not describe messages.");

static PyObject *to_v09(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj, *ends_obj, *partition_obj;
    if (!PyArg_ParseTuple(args, "OOO:to_v09", &buf_obj, &ends_obj, &partition_obj)) {
        return NULL;
    }
    uint64_t partition_id;
    if (as_u64(partition_obj, "partition_id", &partition_id) < 0) {
        return NULL;
    }
    Py_buffer buf, ends_view;
    Py_ssize_t n;
    if (get_messages(buf_obj, ends_obj, 0, &buf, &ends_view, &n) < 0) {
        return NULL;
    }
    const uint8_t *src = (const uint8_t *)buf.buf;
    const int64_t *ends = (const int64_t *)ends_view.buf;
    /* Pass 1: lengths must fill every span; count records and check each origin spread. */
    Py_ssize_t records = 0;
    int status = 0;
    int64_t start = 0;
    uint64_t lo_origin = 0, hi_origin = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *m = src + start;
        int64_t filled = HEADER_BYTES + (int64_t)load_le32(m + PAYLOAD_LENGTH_AT) +
                         (int64_t)load_le32(m + USER_HEADERS_LENGTH_AT);
        if (filled != ends[i] - start) {
            PyBuffer_Release(&ends_view);
            PyBuffer_Release(&buf);
            PyErr_SetString(PyExc_ValueError, "0.8 header lengths do not fill their spans");
            return NULL;
        }
        uint64_t origin = load_le64(m + ORIGIN_TIMESTAMP_AT);
        int first = i == 0;
        if (!first) {
            const uint8_t *prev = src + (i >= 2 ? ends[i - 2] : 0);
            first = load_le64(m + TIMESTAMP_AT) != load_le64(prev + TIMESTAMP_AT) ||
                    load_le64(m + OFFSET_AT) != load_le64(prev + OFFSET_AT) + 1;
        }
        if (first) {
            if (i && hi_origin - lo_origin > UINT32_MAX) {
                status = STATUS09_INVALID_MESSAGE_TIMESTAMP_DELTA;
            }
            records++;
            lo_origin = hi_origin = origin;
        } else {
            lo_origin = origin < lo_origin ? origin : lo_origin;
            hi_origin = origin > hi_origin ? origin : hi_origin;
        }
        start = ends[i];
    }
    if (n && hi_origin - lo_origin > UINT32_MAX) {
        status = STATUS09_INVALID_MESSAGE_TIMESTAMP_DELTA;
    }
    if (status) {
        PyBuffer_Release(&ends_view);
        PyBuffer_Release(&buf);
        return PyLong_FromLong(status);
    }
    int64_t total = n ? ends[n - 1] + (int64_t)(FRAME_HEADER_BYTES - HEADER_BYTES) * n +
                            (int64_t)BATCH_HEADER_BYTES * records
                      : 0;
    PyObject *result = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result == NULL) {
        PyBuffer_Release(&ends_view);
        PyBuffer_Release(&buf);
        return NULL;
    }
    uint8_t *out = (uint8_t *)PyByteArray_AsString(result);
    /* Pass 2, record by record: origin minimum, frames (header, body copy, checksum), then
       the record header and its checksum over the frame checksums. */
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = 0;
    int64_t at = 0;
    while (i < n) {
        int64_t record_start = i ? ends[i - 1] : 0;
        uint64_t timestamp = load_le64(src + record_start + TIMESTAMP_AT);
        uint64_t base_offset = load_le64(src + record_start + OFFSET_AT);
        Py_ssize_t j = i + 1;
        uint64_t origin_min = load_le64(src + record_start + ORIGIN_TIMESTAMP_AT);
        while (j < n) {
            const uint8_t *m = src + ends[j - 1];
            if (load_le64(m + TIMESTAMP_AT) != timestamp ||
                load_le64(m + OFFSET_AT) != base_offset + (uint64_t)(j - i)) {
                break;
            }
            uint64_t origin = load_le64(m + ORIGIN_TIMESTAMP_AT);
            origin_min = origin < origin_min ? origin : origin_min;
            j++;
        }
        uint8_t *head = out + at;
        int64_t w = at + BATCH_HEADER_BYTES;
        for (Py_ssize_t k = i; k < j; k++) {
            const uint8_t *m = src + (k ? ends[k - 1] : 0);
            int64_t span = ends[k] - (k ? ends[k - 1] : 0);
            uint8_t *f = out + w;
            memcpy(f + 8, m + ID_AT, ID_BYTES);
            store_le32(f + 24, (uint32_t)(k - i));
            store_le32(f + 28, (uint32_t)(load_le64(m + ORIGIN_TIMESTAMP_AT) - origin_min));
            memcpy(f + 32, m + USER_HEADERS_LENGTH_AT, 8); /* both lengths, same order */
            memset(f + 40, 0, 8);
            memcpy(f + FRAME_HEADER_BYTES, m + HEADER_BYTES, (size_t)(span - HEADER_BYTES));
            int64_t frame_bytes = span - HEADER_BYTES + FRAME_HEADER_BYTES;
            store_le64(f, hash64(f + 8, (size_t)(frame_bytes - 8)));
            w += frame_bytes;
        }
        memset(head, 0, BATCH_HEADER_BYTES);
        store_le64(head + 0, partition_id);
        store_le64(head + 8, base_offset);
        store_le64(head + 16, timestamp);
        store_le64(head + 24, origin_min);
        store_le64(head + 32, (uint64_t)(w - at));
        store_le32(head + 48, (uint32_t)(j - i));
        store_le64(head + 40, record_digest(head, ends, i, j));
        at = w;
        i = j;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&ends_view);
    PyBuffer_Release(&buf);
    return result;
}

/* One 0.9 frame (48-byte header, then `body` bytes) as a stored 0.8 message at m: offset
   base_offset + offset_delta, the record's timestamp, origin + timestamp_delta, id, lengths
   and body as they are, and the 0.8 checksum (0 without `checksum`). m may overlap f when
   m <= f + 16 (a conversion in place, moving the body by memmove): the frame header is read
   before anything is written. */
static inline void frame_as_v08(uint8_t *m, const uint8_t *f, int64_t body, uint64_t base_offset,
                                uint64_t base_timestamp, uint64_t origin, int checksum) {
    uint8_t fh[FRAME_HEADER_BYTES];
    memcpy(fh, f, FRAME_HEADER_BYTES);
    memmove(m + HEADER_BYTES, f + FRAME_HEADER_BYTES, (size_t)body);
    memcpy(m + ID_AT, fh + 8, ID_BYTES);
    store_le64(m + OFFSET_AT, base_offset + load_le32(fh + 24));
    store_le64(m + TIMESTAMP_AT, base_timestamp);
    store_le64(m + ORIGIN_TIMESTAMP_AT, origin + load_le32(fh + 28));
    memcpy(m + USER_HEADERS_LENGTH_AT, fh + 32, 8);
    memset(m + RESERVED_AT, 0, 8);
    store_le64(m + CHECKSUM_AT,
               checksum ? hash64(m + CHECKSUMMED_FROM, (size_t)(HEADER_BYTES - CHECKSUMMED_FROM + body)) : 0);
}

PyDoc_STRVAR(to_v08_doc,
"to_v08(buf, starts, ends, out, base_offset, base_timestamp, origin_timestamp, checksums) -> None\n\n"
"Frames buf[starts[i]:ends[i]] of one parsed 0.9 batch as stored 0.8 messages written back\n"
"to back into out (exactly their size): offset base_offset + offset_delta, the batch's\n"
"timestamp, origin_timestamp + timestamp_delta, id, lengths and body as they are, and the\n"
"0.8 checksum (0 when checksums is false: the caller stamps the messages afterwards anyway).\n"
"What tidelog.wire.v09.batch.v09_to_v08 gives. Raises ValueError on bad spans.");

static PyObject *to_v08(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj, *starts_obj, *ends_obj, *out_obj, *base_obj, *ts_obj, *origin_obj;
    int checksums;
    if (!PyArg_ParseTuple(args, "OOOOOOOp:to_v08", &buf_obj, &starts_obj, &ends_obj, &out_obj, &base_obj,
                          &ts_obj, &origin_obj, &checksums)) {
        return NULL;
    }
    uint64_t base_offset, base_timestamp, origin_timestamp;
    if (as_u64(base_obj, "base_offset", &base_offset) < 0 ||
        as_u64(ts_obj, "base_timestamp", &base_timestamp) < 0 ||
        as_u64(origin_obj, "origin_timestamp", &origin_timestamp) < 0) {
        return NULL;
    }
    Py_buffer buf, starts, ends, out;
    if (get_spans(buf_obj, starts_obj, ends_obj, out_obj, &buf, &starts, &ends, &out) < 0) {
        return NULL;
    }
    Py_ssize_t n = ends.len / 8;
    const int64_t *start_at = (const int64_t *)starts.buf;
    const int64_t *end_at = (const int64_t *)ends.buf;
    const uint8_t *src = (const uint8_t *)buf.buf;
    int ok = starts.len == ends.len;
    int64_t need = 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        ok = start_at[i] >= 0 && start_at[i] + FRAME_HEADER_BYTES <= end_at[i] && end_at[i] <= buf.len;
        if (ok) {
            const uint8_t *f = src + start_at[i];
            ok = (int64_t)load_le32(f + 32) + (int64_t)load_le32(f + 36) + FRAME_HEADER_BYTES ==
                 end_at[i] - start_at[i];
            need += end_at[i] - start_at[i] + (HEADER_BYTES - FRAME_HEADER_BYTES);
        }
    }
    ok = ok && need == (int64_t)out.len;
    if (ok) {
        uint8_t *dst = (uint8_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        int64_t w = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t body = end_at[i] - start_at[i] - FRAME_HEADER_BYTES;
            frame_as_v08(dst + w, src + start_at[i], body, base_offset, base_timestamp, origin_timestamp,
                         checksums);
            w += HEADER_BYTES + body;
        }
        Py_END_ALLOW_THREADS
    }
    release_spans(&buf, &starts, &ends, &out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "to_v08: frames out of bounds, lengths or output size differ");
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(send_v09_doc,
"send_v09(room, messages_at, ends, partition_id, random16) -> int\n\n"
"A 0.8 SendMessages batch, the messages at room[messages_at:] ending at ends (relative to\n"
"messages_at), turned IN PLACE into one unstamped 0.9 record at room[messages_at - 256:]\n"
"(base offset and timestamp 0): zero ids get random16's bytes with the UUIDv4 bits (as stamp\n"
"gives them), offset deltas 0, 1, ..., origin deltas from the minimum, frame checksums and\n"
"the batch checksum. Frames are 16 bytes shorter than messages, so every write lands at or\n"
"before what it reads. Returns 0, or 4038 (nothing changed) when origin timestamps spread\n"
"over a u32 of microseconds. Raises ValueError on bad arguments or spans.");

static PyObject *send_v09(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *room_obj, *ends_obj, *partition_obj, *random_obj;
    Py_ssize_t messages_at;
    if (!PyArg_ParseTuple(args, "OnOOO:send_v09", &room_obj, &messages_at, &ends_obj, &partition_obj,
                          &random_obj)) {
        return NULL;
    }
    uint64_t partition_id;
    if (as_u64(partition_obj, "partition_id", &partition_id) < 0) {
        return NULL;
    }
    Py_buffer room, ends_view, random;
    if (PyObject_GetBuffer(room_obj, &room, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(ends_obj, &ends_view, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&room);
        return NULL;
    }
    random.buf = NULL;
    random.len = 0;
    int have_random = 0;
    if (random_obj != Py_None) {
        if (PyObject_GetBuffer(random_obj, &random, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&ends_view);
            PyBuffer_Release(&room);
            return NULL;
        }
        have_random = 1;
    }
    Py_ssize_t n = ends_view.len / 8;
    const int64_t *ends = (const int64_t *)ends_view.buf;
    uint8_t *base = (uint8_t *)room.buf + messages_at;
    const char *problem = NULL;
    if (messages_at < BATCH_HEADER_BYTES || n < 1 || ends_view.len % 8 ||
        ends[n - 1] > room.len - messages_at) {
        problem = "send_v09: no room for the record header, or ends outside the buffer";
    }
    /* Pass 1 (reads only): spans, zero ids, origin spread. */
    uint64_t lo = UINT64_MAX, hi = 0;
    Py_ssize_t zeros = 0;
    int64_t start = 0;
    for (Py_ssize_t i = 0; problem == NULL && i < n; i++) {
        const uint8_t *m = base + start;
        if (ends[i] - start < HEADER_BYTES ||
            HEADER_BYTES + (int64_t)load_le32(m + PAYLOAD_LENGTH_AT) +
                    (int64_t)load_le32(m + USER_HEADERS_LENGTH_AT) != ends[i] - start) {
            problem = "send_v09: 0.8 header lengths do not fill their spans";
            break;
        }
        uint64_t origin = load_le64(m + ORIGIN_TIMESTAMP_AT);
        lo = origin < lo ? origin : lo;
        hi = origin > hi ? origin : hi;
        zeros += id_is_zero(m);
        start = ends[i];
    }
    if (problem == NULL && random.len != 16 * zeros) {
        problem = "send_v09: random16 must hold 16 bytes per zero id";
    }
    if (problem != NULL || hi - lo > UINT32_MAX) {
        if (have_random) PyBuffer_Release(&random);
        PyBuffer_Release(&ends_view);
        PyBuffer_Release(&room);
        if (problem != NULL) {
            PyErr_SetString(PyExc_ValueError, problem);
            return NULL;
        }
        return PyLong_FromLong(STATUS09_INVALID_MESSAGE_TIMESTAMP_DELTA);
    }
    uint8_t *head = base - BATCH_HEADER_BYTES;
    const uint8_t *next_random = (const uint8_t *)random.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t r = 0, w = 0; /* read position (0.8) and write position (0.9), from base */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t *m = base + r;
        int64_t body = ends[i] - r - HEADER_BYTES;
        uint8_t id[ID_BYTES], lengths[8];
        if (id_is_zero(m)) {
            set_uuid4(id, next_random);
            next_random += ID_BYTES;
        } else {
            memcpy(id, m + ID_AT, ID_BYTES);
        }
        memcpy(lengths, m + USER_HEADERS_LENGTH_AT, 8);
        uint64_t origin = load_le64(m + ORIGIN_TIMESTAMP_AT);
        /* The frame goes where this message's bytes (or earlier ones) were: body first, by
           memmove, since the two may overlap; the header fields were read above. */
        uint8_t *f = head + BATCH_HEADER_BYTES + w;
        memmove(f + FRAME_HEADER_BYTES, m + HEADER_BYTES, (size_t)body);
        memcpy(f + 8, id, ID_BYTES);
        store_le32(f + 24, (uint32_t)i);
        store_le32(f + 28, (uint32_t)(origin - lo));
        memcpy(f + 32, lengths, 8);
        memset(f + 40, 0, 8);
        store_le64(f, hash64(f + 8, (size_t)(FRAME_HEADER_BYTES - 8 + body)));
        w += FRAME_HEADER_BYTES + body;
        r = ends[i];
    }
    memset(head, 0, BATCH_HEADER_BYTES);
    store_le64(head + 0, partition_id);
    store_le64(head + 24, lo);
    store_le64(head + 32, (uint64_t)(BATCH_HEADER_BYTES + w));
    store_le32(head + 48, (uint32_t)n);
    store_le64(head + 40, record_digest(head, ends, 0, n));
    Py_END_ALLOW_THREADS
    if (have_random) PyBuffer_Release(&random);
    PyBuffer_Release(&ends_view);
    PyBuffer_Release(&room);
    return PyLong_FromLong(0);
}

/* Pass 1 of a records-to-0.8 conversion: every record and frame lies inside src[0, total),
   the records tile it; their 0.8 size (`need`), message and record counts. 0 when they do not. */
static int tile_records(const uint8_t *src, int64_t total, int64_t *need_out, int64_t *messages_out,
                        int64_t *records_out) {
    int64_t pos = 0, need = 0, messages = 0, records = 0;
    while (pos < total) {
        if (pos + BATCH_HEADER_BYTES > total) return 0;
        uint64_t length = load_le64(src + pos + 32);
        uint32_t count = load_le32(src + pos + 48);
        if (!(length >= BATCH_HEADER_BYTES + (uint64_t)count * FRAME_HEADER_BYTES && count > 0 &&
              length <= (uint64_t)(total - pos))) {
            return 0;
        }
        int64_t end = pos + (int64_t)length, f = pos + BATCH_HEADER_BYTES;
        for (uint32_t i = 0; i < count; i++) {
            if (f + FRAME_HEADER_BYTES > end) return 0;
            int64_t body = (int64_t)load_le32(src + f + 32) + (int64_t)load_le32(src + f + 36);
            f += FRAME_HEADER_BYTES + body;
            if (f > end) return 0;
            need += HEADER_BYTES + body;
        }
        if (f != end) return 0;
        messages += count;
        records += 1;
        pos = end;
    }
    *need_out = need;
    *messages_out = messages;
    *records_out = records;
    return 1;
}

/* Pass 2: the tiled records of src as 0.8 messages at dst, their ends in end_at. dst may be
   src - 16 * messages or later (in place): each message is then written only over bytes
   already read, since a 0.8 message is 16 bytes longer than its frame and every record gives
   back 256 header bytes (see frame_as_v08). */
static void convert_records(const uint8_t *src, int64_t total, uint8_t *dst, int64_t *end_at) {
    int64_t w = 0, k = 0, pos = 0;
    while (pos < total) {
        const uint8_t *r = src + pos;
        uint64_t base_offset = load_le64(r + 8), base_timestamp = load_le64(r + 16);
        uint64_t origin = load_le64(r + 24), length = load_le64(r + 32);
        uint32_t count = load_le32(r + 48);
        int64_t f = pos + BATCH_HEADER_BYTES;
        for (uint32_t i = 0; i < count; i++) {
            const uint8_t *fr = src + f;
            int64_t body = (int64_t)load_le32(fr + 32) + (int64_t)load_le32(fr + 36);
            frame_as_v08(dst + w, fr, body, base_offset, base_timestamp, origin, 1);
            w += HEADER_BYTES + body;
            end_at[k++] = w;
            f += FRAME_HEADER_BYTES + body;
        }
        pos += (int64_t)length;
    }
}

PyDoc_STRVAR(records_v08_doc,
"records_v08(buf) -> (out, ends)\n\n"
"Concatenated stamped 0.9 records (a poll's records, possibly sliced: 4.5) as stored 0.8\n"
"messages in one new bytearray, with their int64 ends (bytes): per frame what to_v08 writes,\n"
"0.8 checksums included, walking record headers and frame lengths in C (no parse per record).\n"
"What tidelog.wire.v09.batch.records_to_v08 gives. Raises ValueError when the records do not\n"
"tile buf (their structure is not verified otherwise: they come from the store).");

static PyObject *records_v08(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj;
    if (!PyArg_ParseTuple(args, "O:records_v08", &buf_obj)) {
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(buf_obj, &buf, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *src = (const uint8_t *)buf.buf;
    int64_t need = 0, messages = 0, records = 0;
    if (!tile_records(src, buf.len, &need, &messages, &records)) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "records_v08: the records do not tile the buffer");
        return NULL;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)need);
    PyObject *ends = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(messages * 8));
    if (out == NULL || ends == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(ends);
        PyBuffer_Release(&buf);
        return NULL;
    }
    uint8_t *dst = (uint8_t *)PyByteArray_AsString(out);
    int64_t *end_at = (int64_t *)PyBytes_AsString(ends);
    Py_BEGIN_ALLOW_THREADS
    convert_records(src, buf.len, dst, end_at);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return Py_BuildValue("(NN)", out, ends);
}

PyDoc_STRVAR(file_records_v08_doc,
"file_records_v08(fd, offset, length, count) -> (out, ends, size)\n\n"
"records_v08 of the stored records at fd[offset, offset + length) (count: how many messages\n"
"they hold, as the index says), read with pread straight into the reply buffer and converted\n"
"there in place: one copy from the page cache instead of a read and a converting copy. The\n"
"0.8 messages are out[:size], their int64 ends in ends. OSError when the read fails,\n"
"ValueError when fewer bytes come back or the records do not tile them. A count below the\n"
"true one only costs a second buffer.");

static PyObject *file_records_v08(PyObject *module, PyObject *args) {
    (void)module;
    int fd;
    long long offset, length, count;
    if (!PyArg_ParseTuple(args, "iLLL:file_records_v08", &fd, &offset, &length, &count)) {
        return NULL;
    }
    if (offset < 0 || length <= 0 || count <= 0 || length > PY_SSIZE_T_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "file_records_v08: bad offset, length or count");
        return NULL;
    }
    /* The records land 16 bytes per message in, so that converting them forward never
       overtakes what is still to be read (convert_records); the range holds at most one
       message per frame header's worth of bytes. */
    int64_t room = 16 * (count < length / FRAME_HEADER_BYTES ? (int64_t)count : length / FRAME_HEADER_BYTES);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(room + length));
    if (out == NULL) {
        return NULL;
    }
    uint8_t *buf = (uint8_t *)PyByteArray_AsString(out);
    uint8_t *src = buf + room;
    int64_t got = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    while (got < length) {
        ssize_t n = pread(fd, src + got, (size_t)(length - got), (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0) break;
        got += n;
    }
    Py_END_ALLOW_THREADS
    if (err) {
        Py_DECREF(out);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int64_t need = 0, messages = 0, records = 0;
    if (got < length || !tile_records(src, length, &need, &messages, &records)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "file_records_v08: the records read do not tile the range");
        return NULL;
    }
    PyObject *ends = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(messages * 8));
    if (ends == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    int64_t *end_at = (int64_t *)PyBytes_AsString(ends);
    if (16 * messages <= room) {
        Py_BEGIN_ALLOW_THREADS
        convert_records(src, length, buf, end_at);
        Py_END_ALLOW_THREADS
    } else {  /* more messages than the caller said: no room to convert in place */
        PyObject *fresh = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)need);
        if (fresh == NULL) {
            Py_DECREF(out);
            Py_DECREF(ends);
            return NULL;
        }
        Py_BEGIN_ALLOW_THREADS
        convert_records(src, length, (uint8_t *)PyByteArray_AsString(fresh), end_at);
        Py_END_ALLOW_THREADS
        Py_DECREF(out);
        out = fresh;
    }
    return Py_BuildValue("(NNL)", out, ends, (long long)need);
}

PyDoc_STRVAR(walk_frames_doc,
"walk_frames(buf, start, end) -> (starts, stopped)\n\n"
"0.9 frame starts from start by their length fields while a whole frame header fits before\n"
"end, and where the walk stopped (tidelog.wire.v09.batch._walk_frames). starts is int64 bytes.");

static PyObject *walk_frames(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buf_obj;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "Onn:walk_frames", &buf_obj, &start, &end)) {
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(buf_obj, &buf, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 0 || end < start || end > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "walk_frames: range outside the buffer");
        return NULL;
    }
    /* Every step advances a whole frame header, so this bounds the count. */
    Py_ssize_t capacity = (end - start) / FRAME_HEADER_BYTES;
    int64_t *starts = PyMem_Malloc(capacity ? (size_t)capacity * 8 : 8);
    if (starts == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    const uint8_t *base = (const uint8_t *)buf.buf;
    Py_ssize_t count = 0;
    int64_t pos = start;
    while (pos + FRAME_HEADER_BYTES <= end) {
        starts[count++] = pos;
        pos += FRAME_HEADER_BYTES + (int64_t)load_le32(base + pos + 32) + (int64_t)load_le32(base + pos + 36);
    }
    PyBuffer_Release(&buf);
    PyObject *out = PyBytes_FromStringAndSize((const char *)starts, count * 8);
    PyMem_Free(starts);
    if (out == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NL)", out, (long long)pos);
}

PyDoc_STRVAR(set_avx2_doc,
"set_avx2(enabled) -> bool\n\n"
"Whether checksums longer than 240 bytes use xxHash's AVX2 loop from now on (only where the CPU\n"
"has AVX2; on by default there): for tests, which hold both loops to the same values.");

static PyObject *set_avx2(PyObject *module, PyObject *args) {
    (void)module;
    int enabled;
    if (!PyArg_ParseTuple(args, "p:set_avx2", &enabled)) {
        return NULL;
    }
#ifdef TIDELOG_HASH_AVX2
    __builtin_cpu_init();
    have_avx2 = enabled && __builtin_cpu_supports("avx2");
    return PyBool_FromLong(have_avx2);
#else
    return PyBool_FromLong(0);
#endif
}

static PyMethodDef methods[] = {
    {"walk_frames", walk_frames, METH_VARARGS, walk_frames_doc},
    {"records_v08", records_v08, METH_VARARGS, records_v08_doc},
    {"file_records_v08", file_records_v08, METH_VARARGS, file_records_v08_doc},
    {"set_avx2", set_avx2, METH_VARARGS, set_avx2_doc},
    {"send_v09", send_v09, METH_VARARGS, send_v09_doc},
    {"scan", scan, METH_VARARGS, scan_doc},
    {"to_v09", to_v09, METH_VARARGS, to_v09_doc},
    {"to_v08", to_v08, METH_VARARGS, to_v08_doc},
    {"digests", digests, METH_VARARGS, digests_doc},
    {"validate", validate, METH_VARARGS, validate_doc},
    {"stamp", stamp, METH_VARARGS, stamp_doc},
    {"zero_ids", zero_ids, METH_VARARGS, zero_ids_doc},
    {"checksums_verify", checksums_verify, METH_VARARGS, checksums_verify_doc},
    {NULL, NULL, 0, NULL},
};

/* Multi-phase init with no module state: safe to load in subinterpreters. */
static PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tidelog._stamp",
    .m_doc = "Whole-batch validation, stamping and checksum checks in C; see tidelog.wire.batch.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__stamp(void) {
#ifdef TIDELOG_HASH_AVX2
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModuleDef_Init(&module_def);
}
