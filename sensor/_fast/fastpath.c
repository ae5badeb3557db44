/* sensor._fast._fastpath: the compiled per-packet loop (pcap records -> L2-L4 -> flow counters).
 *
 * Reference semantics: sensor/_fast/fallback.py, sensor/decode/l2l4.py (decode_batch) and
 * sensor/flows/table.py (FlowTable._one). This file must stay equivalent to them; the tests in
 * tests/test_fastpath*.py compare both on every sample capture and on random frames.
 *
 * What is handled here without a Python call, per packet of a flow the FlowTable has registered
 * (FastTable.track):
 *   - pure ACKs and other TCP segments without payload or SYN/FIN/RST,
 *   - payload of flows whose application is known to be none (flow.app is False),
 *   - in-order data-set segments that fit in the analyzer's skip credit (protocols/base.py),
 *   - UDP/other packets of known flows.
 * Everything else is handed, in capture order, to FlowTable._one as the same Packet tuple
 * decode_batch builds. Before that call the flow's counters accumulated here are written back
 * into the Python Flow ("merge"), and after it the flow's state is read again ("track"), so
 * Python always sees exactly what the pure-Python loop would have produced.
 *
 * Also here: parse_command, the DIMSE command-set decoder (reference: sensor/protocols/dicom/dimse.py,
 * _parse_command_py), called about once per DIMSE message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX, READONLY: Command's slots (3.11 has no Py_T_*) */
#include <stdint.h>
#include <string.h>

/* ---- decode reasons (names as in decode_batch: "decode.<reason>") ------------------------- */
enum {
    RS_OK = 0, RS_TRUNC_ETH, RS_TRUNC_VLAN, RS_NON_IP, RS_TRUNC_SLL, RS_TRUNC_IP, RS_TRUNC_IPV4,
    RS_BAD_IPV4, RS_IPV4_FRAG, RS_TRUNC_IPV6, RS_BAD_IPV6, RS_BAD_IPV6_EXT, RS_IPV6_FRAG,
    RS_TRUNC_TCP, RS_BAD_TCP, RS_TRUNC_UDP, RS_COUNT
};
static const char *reason_names[RS_COUNT] = {
    "", "truncated_ethernet", "truncated_vlan", "non_ip", "truncated_sll", "truncated_ip",
    "truncated_ipv4", "bad_ipv4_header", "ipv4_fragment", "truncated_ipv6", "bad_ipv6_header",
    "bad_ipv6_ext", "ipv6_fragment", "truncated_tcp", "bad_tcp_header", "truncated_udp",
};
static PyObject *reason_str[RS_COUNT];

enum { LT_ETH = 1, LT_SLL, LT_SLL2, LT_RAW };

typedef struct {
    int cls;      /* LT_* */
    int base;     /* where IP (or the SLL header end) starts */
    int mac_off;  /* 0 for Ethernet, -1 otherwise */
} LinkInfo;

static int
link_info(long lt, LinkInfo *li)
{
    switch (lt) {
    case 1: li->cls = LT_ETH; li->base = 0; li->mac_off = 0; return 0;
    case 113: li->cls = LT_SLL; li->base = 16; li->mac_off = -1; return 0;
    case 276: li->cls = LT_SLL2; li->base = 20; li->mac_off = -1; return 0;
    case 101: case 228: case 229: case 12: case 14:
        li->cls = LT_RAW; li->base = 0; li->mac_off = -1; return 0;
    case 0: case 108: li->cls = LT_RAW; li->base = 4; li->mac_off = -1; return 0;
    }
    PyErr_Format(PyExc_ValueError, "link type %ld not supported", lt);
    return -1;
}

typedef struct {
    int proto, af;              /* af: 4 or 6 */
    uint32_t src4, dst4;
    const uint8_t *src6, *dst6;
    int sport, dport, flags;
    uint32_t seq, ack;
    Py_ssize_t pay_off, pay_end; /* payload = frame[pay_off:pay_end] when has_payload */
    int has_payload;
    long ip_len, missing;
    int vlan;
} Pkt;

static inline unsigned be16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint32_t rd32(const uint8_t *p, int swap)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swap ? __builtin_bswap32(v) : v;
}
static inline int is_vlan_tag(unsigned e) { return e == 0x8100 || e == 0x88A8 || e == 0x9100; }

/* One frame, exactly as decode_batch: returns RS_OK or the reason it was not an IP packet. */
static int
decode_frame(const LinkInfo *li, const uint8_t *f, Py_ssize_t flen, Pkt *k)
{
    Py_ssize_t off;
    int version;
    k->vlan = 0;
    if (li->cls == LT_ETH) {
        if (flen < 14) return RS_TRUNC_ETH;
        long etype = be16(f + 12);
        off = 14;
        if (is_vlan_tag((unsigned)etype)) {
            k->vlan = flen >= 18 ? (int)(be16(f + 14) & 0x0FFF) : 0;
            while (is_vlan_tag((unsigned)etype)) {
                if (off + 4 > flen) return RS_TRUNC_VLAN;
                etype = be16(f + off + 2);
                off += 4;
            }
        }
        if (etype == 0x0800) version = 4;
        else if (etype == 0x86DD) version = 6;
        else return RS_NON_IP;
    } else if (li->cls == LT_SLL || li->cls == LT_SLL2) {
        if (flen < li->base) return RS_TRUNC_SLL;
        unsigned etype = be16(f + (li->cls == LT_SLL ? 14 : 0));
        off = li->base;
        if (etype == 0x0800) version = 4;
        else if (etype == 0x86DD) version = 6;
        else return RS_NON_IP;
    } else {
        off = li->base;
        if (flen <= off) return RS_TRUNC_IP;
        version = f[off] >> 4;
        if (version != 4 && version != 6) return RS_NON_IP;
    }

    Py_ssize_t l4, end;
    int proto;
    if (version == 4) {
        if (off + 20 > flen) return RS_TRUNC_IPV4;
        unsigned ver_ihl = f[off];
        long total = be16(f + off + 2);
        unsigned frag = be16(f + off + 6);
        long ihl = (ver_ihl & 0x0F) * 4;
        proto = f[off + 9];
        if ((ver_ihl >> 4) != 4 || ihl < 20 || total < ihl) return RS_BAD_IPV4;
        if (frag & 0x3FFF) return RS_IPV4_FRAG;
        k->af = 4;
        k->src4 = be32(f + off + 12);
        k->dst4 = be32(f + off + 16);
        l4 = off + ihl;
        end = off + total;
        k->ip_len = total;
    } else {
        if (off + 40 > flen) return RS_TRUNC_IPV6;
        uint32_t vtcfl = be32(f + off);
        long plen = be16(f + off + 4);
        proto = f[off + 6];
        if ((vtcfl >> 28) != 6) return RS_BAD_IPV6;
        k->af = 6;
        k->src6 = f + off + 8;
        k->dst6 = f + off + 24;
        l4 = off + 40;
        end = l4 + plen;
        k->ip_len = plen + 40;
        int n_ext = 0;
        while (proto == 0 || proto == 43 || proto == 60 || proto == 135 || proto == 139 ||
               proto == 140 || proto == 44 || proto == 51) {
            n_ext++;
            if (l4 + 8 > flen || n_ext > 8) return RS_BAD_IPV6_EXT;
            int nxt = f[l4];
            long hlen = f[l4 + 1];
            if (proto == 44) {
                if (be16(f + l4 + 2) & 0xFFF9) return RS_IPV6_FRAG;
                l4 += 8;
            } else if (proto == 51) {
                l4 += (hlen + 2) * 4;
            } else {
                l4 += (hlen + 1) * 8;
            }
            proto = nxt;
        }
        if (l4 > end) return RS_BAD_IPV6_EXT;
    }
    k->proto = proto;
    k->missing = 0;
    if (end > flen) {
        k->missing = (long)(end - flen);
        end = flen;
    }
    k->has_payload = 0;
    k->pay_off = k->pay_end = 0;
    if (proto == 6) {
        if (l4 + 20 > end) return RS_TRUNC_TCP;
        k->sport = (int)be16(f + l4);
        k->dport = (int)be16(f + l4 + 2);
        k->seq = be32(f + l4 + 4);
        k->ack = be32(f + l4 + 8);
        Py_ssize_t doff = (f[l4 + 12] >> 4) * 4;
        k->flags = f[l4 + 13];
        if (doff < 20 || l4 + doff > end) return RS_BAD_TCP;
        if (end > l4 + doff) {
            k->has_payload = 1;
            k->pay_off = l4 + doff;
            k->pay_end = end;
        }
    } else if (proto == 17) {
        if (l4 + 8 > end) return RS_TRUNC_UDP;
        k->sport = (int)be16(f + l4);
        k->dport = (int)be16(f + l4 + 2);
        k->flags = 0;
        k->seq = k->ack = 0;
        if (end > l4 + 8) {
            k->has_payload = 1;
            k->pay_off = l4 + 8;
            k->pay_end = end;
        }
    } else {
        k->sport = k->dport = k->flags = 0;
        k->seq = k->ack = 0;
    }
    return RS_OK;
}

/* The Packet tuple of decode_batch (sensor/decode/l2l4.py P_* order). `frame` is a new or
 * borrowed-by-caller object; this function takes its own reference. */
static PyObject *
make_packet(const Pkt *k, double ts, PyObject *frame, int mac_off)
{
    PyObject *t = PyTuple_New(15);
    if (t == NULL) return NULL;
    PyObject *src, *dst, *payload;
    if (k->af == 4) {
        src = PyLong_FromUnsignedLong(k->src4);
        dst = PyLong_FromUnsignedLong(k->dst4);
    } else {
        src = PyBytes_FromStringAndSize((const char *)k->src6, 16);
        dst = PyBytes_FromStringAndSize((const char *)k->dst6, 16);
    }
    if (k->has_payload) {
        payload = PySequence_GetSlice(frame, k->pay_off, k->pay_end);
    } else {
        payload = Py_None;
        Py_INCREF(payload);
    }
    PyObject *items[15] = {
        PyFloat_FromDouble(ts), PyLong_FromLong(k->proto), src, PyLong_FromLong(k->sport), dst,
        PyLong_FromLong(k->dport), PyLong_FromLong(k->flags), PyLong_FromUnsignedLong(k->seq),
        PyLong_FromUnsignedLong(k->ack), payload, PyLong_FromLong(k->ip_len), frame,
        PyLong_FromLong(mac_off), PyLong_FromLong(k->vlan), PyLong_FromLong(k->missing),
    };
    Py_INCREF(frame);
    int ok = 1;
    for (int i = 0; i < 15; i++) {
        if (items[i] == NULL) ok = 0;
        PyTuple_SET_ITEM(t, i, items[i]); /* NULL slots are fine for tuple dealloc */
    }
    if (!ok) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static int
flush_bad(PyObject *bad, const long long *counts)
{
    for (int r = 1; r < RS_COUNT; r++) {
        if (!counts[r]) continue;
        PyObject *old = PyDict_GetItemWithError(bad, reason_str[r]);
        long long v = counts[r];
        if (old != NULL) {
            v += PyLong_AsLongLong(old);
            if (PyErr_Occurred()) return -1;
        } else if (PyErr_Occurred()) {
            return -1;
        }
        PyObject *n = PyLong_FromLongLong(v);
        if (n == NULL || PyDict_SetItem(bad, reason_str[r], n) < 0) {
            Py_XDECREF(n);
            return -1;
        }
        Py_DECREF(n);
    }
    return 0;
}

/* ---- pcap record scanning ------------------------------------------------------------------ */

/* scan_pcap(buf, pos, swapped, limit, max_records) -> (pos, count, captured_bytes, status)
 * status 0: max_records complete records found; 1: the next record is not complete in buf;
 * 2: the record at pos claims more than `limit` captured bytes (corrupt). */
static PyObject *
scan_pcap(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t pos, limit, max_records;
    int swap;
    if (!PyArg_ParseTuple(args, "y*npnn", &b, &pos, &swap, &limit, &max_records)) return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t blen = b.len, n = 0;
    long long nbytes = 0;
    int status = 0;
    if (pos < 0) pos = blen;
    while (n < max_records) {
        if (blen - pos < 16) { status = 1; break; }
        uint32_t incl = rd32(buf + pos + 8, swap);
        if ((Py_ssize_t)incl > limit) { status = 2; break; }
        if ((Py_ssize_t)incl > blen - pos - 16) { status = 1; break; }
        pos += 16 + (Py_ssize_t)incl;
        nbytes += incl;
        n++;
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("nnLi", pos, n, nbytes, status);
}

static inline double
rec_ts(const uint8_t *h, int swap, double units)
{
    /* Python: sec + frac / units (int/int true division is the correctly rounded quotient). */
    return (double)rd32(h, swap) + (double)rd32(h + 4, swap) / units;
}

/* parse_pcap(buf, start, count, swapped, units) -> (ts list, frame memoryviews, wire lengths) */
static PyObject *
parse_pcap(PyObject *mod, PyObject *args)
{
    PyObject *bufobj;
    Py_ssize_t pos, count;
    int swap;
    double units;
    if (!PyArg_ParseTuple(args, "Onnpd", &bufobj, &pos, &count, &swap, &units)) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(bufobj, &b, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *mv = PyMemoryView_FromObject(bufobj);
    PyObject *ts = PyList_New(count), *frames = PyList_New(count), *wire = PyList_New(count);
    PyObject *res = NULL;
    if (mv == NULL || ts == NULL || frames == NULL || wire == NULL) goto done;
    const uint8_t *buf = b.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (pos < 0 || pos + 16 > b.len) goto bounds;
        uint32_t incl = rd32(buf + pos + 8, swap);
        if ((Py_ssize_t)incl > b.len - pos - 16) goto bounds;
        PyObject *t = PyFloat_FromDouble(rec_ts(buf + pos, swap, units));
        PyObject *w = PyLong_FromUnsignedLong(rd32(buf + pos + 12, swap));
        PyObject *fr = PySequence_GetSlice(mv, pos + 16, pos + 16 + incl);
        PyList_SET_ITEM(ts, i, t);
        PyList_SET_ITEM(wire, i, w);
        PyList_SET_ITEM(frames, i, fr);
        if (t == NULL || w == NULL || fr == NULL) goto done;
        pos += 16 + (Py_ssize_t)incl;
    }
    res = PyTuple_Pack(3, ts, frames, wire);
    goto done;
bounds:
    PyErr_SetString(PyExc_ValueError, "pcap record outside the buffer");
done:
    Py_XDECREF(ts);
    Py_XDECREF(frames);
    Py_XDECREF(wire);
    Py_XDECREF(mv);
    PyBuffer_Release(&b);
    return res;
}

/* pcap_ts(buf, start, count, swapped, units) -> timestamps only (what a source needs to order files) */
static PyObject *
pcap_ts(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t pos, count;
    int swap;
    double units;
    if (!PyArg_ParseTuple(args, "y*nnpd", &b, &pos, &count, &swap, &units)) return NULL;
    PyObject *ts = PyList_New(count);
    const uint8_t *buf = b.buf;
    for (Py_ssize_t i = 0; ts != NULL && i < count; i++) {
        if (pos < 0 || pos + 16 > b.len || (Py_ssize_t)rd32(buf + pos + 8, swap) > b.len - pos - 16) {
            PyErr_SetString(PyExc_ValueError, "pcap record outside the buffer");
            Py_CLEAR(ts);
            break;
        }
        PyObject *t = PyFloat_FromDouble(rec_ts(buf + pos, swap, units));
        if (t == NULL) {
            Py_CLEAR(ts);
            break;
        }
        PyList_SET_ITEM(ts, i, t);
        pos += 16 + (Py_ssize_t)rd32(buf + pos + 8, swap);
    }
    PyBuffer_Release(&b);
    return ts;
}

/* decode(linktype, ts_list, frames, bad: dict) -> list of Packet tuples (decode_batch). */
static PyObject *
decode(PyObject *mod, PyObject *args)
{
    long lt;
    PyObject *ts_list, *frames, *bad;
    if (!PyArg_ParseTuple(args, "lOOO!", &lt, &ts_list, &frames, &PyDict_Type, &bad)) return NULL;
    LinkInfo li;
    if (link_info(lt, &li) < 0) return NULL;
    PyObject *fseq = PySequence_Fast(frames, "frames must be a sequence");
    if (fseq == NULL) return NULL;
    PyObject *out = PyList_New(0);
    long long counts[RS_COUNT] = {0};
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fseq);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *frame = PySequence_Fast_GET_ITEM(fseq, i);
        Py_buffer fb;
        if (PyObject_GetBuffer(frame, &fb, PyBUF_SIMPLE) < 0) { Py_CLEAR(out); break; }
        Pkt k;
        int r = decode_frame(&li, fb.buf, fb.len, &k);
        PyBuffer_Release(&fb);
        if (r) { counts[r]++; continue; }
        PyObject *tso = PySequence_GetItem(ts_list, i);
        double ts = tso ? PyFloat_AsDouble(tso) : -1.0;
        if (tso == NULL || (ts == -1.0 && PyErr_Occurred())) { Py_XDECREF(tso); Py_CLEAR(out); break; }
        PyObject *p = make_packet(&k, ts, frame, li.mac_off);
        if (p != NULL && !PyFloat_CheckExact(tso)) {
            /* keep the caller's timestamp object (an int stays an int, as in decode_batch) */
            Py_INCREF(tso);
            Py_SETREF(((PyTupleObject *)p)->ob_item[0], tso);
        }
        Py_DECREF(tso);
        if (p == NULL || PyList_Append(out, p) < 0) { Py_XDECREF(p); Py_CLEAR(out); break; }
        Py_DECREF(p);
    }
    Py_DECREF(fseq);
    if (out != NULL && flush_bad(bad, counts) < 0) Py_CLEAR(out);
    return out;
}

/* ---- the flow side --------------------------------------------------------------------------- */

enum { M_OFF = 0, M_TCP, M_OTHER };        /* entry mode: M_OFF = Python handles every packet */
enum { K_PLAIN = 0, K_CREDIT, K_COUNT };   /* TCP payload handling */

typedef struct {
    PyObject *flow;       /* strong; NULL = free slot */
    PyObject *credit;     /* strong; the analyzer's skip_credit list (K_CREDIT) */
    PyObject *data_cb;    /* strong; flow.analyzer.data when an analyzer is attached */
    uint64_t hash;
    int next_free;
    uint8_t af, proto, mode, kind, ack_ok, dirty, has_ts;
    uint8_t seq_ok[2];
    uint8_t addr_c[16], addr_s[16];
    uint16_t port_c, port_s;
    uint32_t next_seq[2];
    long long credit_left[2];  /* by direction d (0 = to server): skip_credit[1 - d] */
    long long pk[2], by[2], pl[2], delivered[2], used[2];
    int flags;
    double ts_last;
} Entry;

typedef struct {
    PyObject_HEAD
    PyObject *table;   /* the FlowTable (for _next_sweep) */
    PyObject *one;     /* table._one: handles one packet, returns its Flow */
    Entry *ents;
    Py_ssize_t n_ents, cap_ents;
    int free_head;
    int32_t *slots;    /* open addressing: entry index, -1 empty, -2 deleted */
    size_t mask;
    Py_ssize_t used, deleted;
    long long fast_packets, slow_packets, delivered_packets;
    int busy;
} FastTable;

static PyObject *s_analyzer, *s_data, *s_fast, *s_key, *s_closed_at, *s_handshake, *s_syn, *s_synack, *s_app, *s_credit,
    *s_streams, *s_next_seq, *s_held, *s_delivered, *s_packets, *s_bytes, *s_payload, *s_flags,
    *s_ts_last, *s_next_sweep, *s_one;

static inline uint64_t
mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline uint64_t
ep_hash(const uint8_t *a, int af, int port)
{
    uint64_t h;
    if (af == 4) {
        uint32_t v;
        memcpy(&v, a, 4);
        h = v;
    } else {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, a + 8, 8);
        h = x ^ mix64(y);
    }
    return mix64(h * 0x9E3779B97F4A7C15ULL + (uint64_t)port);
}

/* Symmetric in the two endpoints: both directions of a flow land on the same slot chain. */
static inline uint64_t
flow_hash(int proto, int af, const uint8_t *a, int pa, const uint8_t *b, int pb)
{
    return mix64((ep_hash(a, af, pa) + ep_hash(b, af, pb)) ^ ((uint64_t)proto << 56) ^ (uint64_t)af);
}

static inline int
addr_eq(const uint8_t *x, const uint8_t *y, int af)
{
    return af == 4 ? memcmp(x, y, 4) == 0 : memcmp(x, y, 16) == 0;
}

/* Find the entry of a packet; *d = 0 when it goes client -> server. -1 when not registered. */
static int
ft_lookup(FastTable *t, int proto, int af, const uint8_t *src, int sport, const uint8_t *dst, int dport,
          uint64_t h, int *d)
{
    if (t->slots == NULL) return -1;
    size_t i = (size_t)h & t->mask;
    for (;;) {
        int32_t ix = t->slots[i];
        if (ix == -1) return -1;
        if (ix >= 0) {
            Entry *e = &t->ents[ix];
            if (e->hash == h && e->proto == proto && e->af == af) {
                if (e->port_c == sport && e->port_s == dport && addr_eq(e->addr_c, src, af) &&
                    addr_eq(e->addr_s, dst, af)) {
                    *d = 0;
                    return ix;
                }
                if (e->port_c == dport && e->port_s == sport && addr_eq(e->addr_c, dst, af) &&
                    addr_eq(e->addr_s, src, af)) {
                    *d = 1;
                    return ix;
                }
            }
        }
        i = (i + 1) & t->mask;
    }
}

static int
ft_rehash(FastTable *t, size_t nslots)
{
    int32_t *s = PyMem_Malloc(nslots * sizeof(int32_t));
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(s, 0xFF, nslots * sizeof(int32_t));
    size_t mask = nslots - 1;
    for (Py_ssize_t ix = 0; ix < t->n_ents; ix++) {
        if (t->ents[ix].flow == NULL) continue;
        size_t i = (size_t)t->ents[ix].hash & mask;
        while (s[i] != -1) i = (i + 1) & mask;
        s[i] = (int32_t)ix;
    }
    PyMem_Free(t->slots);
    t->slots = s;
    t->mask = mask;
    t->deleted = 0;
    return 0;
}

static int
ft_insert(FastTable *t, Entry *proto_e)
{
    size_t nslots = t->slots ? t->mask + 1 : 0;
    if ((size_t)(t->used + t->deleted + 1) * 2 > nslots) {
        size_t want = nslots ? nslots : 1024;
        while ((size_t)(t->used + 1) * 4 > want) want *= 2;
        if (ft_rehash(t, want) < 0) return -1;
    }
    int ix;
    if (t->free_head >= 0) {
        ix = t->free_head;
        t->free_head = t->ents[ix].next_free;
    } else {
        if (t->n_ents == t->cap_ents) {
            Py_ssize_t cap = t->cap_ents ? t->cap_ents * 2 : 1024;
            if (cap > INT32_MAX) {
                PyErr_NoMemory();
                return -1;
            }
            Entry *ne = PyMem_Realloc(t->ents, cap * sizeof(Entry));
            if (ne == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            t->ents = ne;
            t->cap_ents = cap;
        }
        ix = (int)t->n_ents++;
    }
    t->ents[ix] = *proto_e;
    size_t i = (size_t)proto_e->hash & t->mask;
    while (t->slots[i] >= 0) i = (i + 1) & t->mask;
    if (t->slots[i] == -2) t->deleted--;
    t->slots[i] = ix;
    t->used++;
    return ix;
}

static void
ft_remove(FastTable *t, int ix)
{
    Entry *e = &t->ents[ix];
    size_t i = (size_t)e->hash & t->mask;
    while (t->slots[i] != ix) i = (i + 1) & t->mask;
    t->slots[i] = -2;
    t->deleted++;
    t->used--;
    Py_CLEAR(e->flow);
    Py_CLEAR(e->credit);
    Py_CLEAR(e->data_cb);
    e->next_free = t->free_head;
    t->free_head = ix;
}

static int
list_add(PyObject *flow, PyObject *name, int d, long long delta)
{
    PyObject *lst = PyObject_GetAttr(flow, name);
    if (lst == NULL) return -1;
    if (!PyList_CheckExact(lst) || PyList_GET_SIZE(lst) != 2) {
        PyErr_Format(PyExc_TypeError, "Flow.%U must be a two-item list", name);
        Py_DECREF(lst);
        return -1;
    }
    long long v = PyLong_AsLongLong(PyList_GET_ITEM(lst, d));
    if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(lst);
        return -1;
    }
    PyObject *nv = PyLong_FromLongLong(v + delta);
    if (nv == NULL) {
        Py_DECREF(lst);
        return -1;
    }
    PyList_SetItem(lst, d, nv);
    Py_DECREF(lst);
    return 0;
}

static int
set_long(PyObject *obj, PyObject *name, long long v)
{
    PyObject *o = PyLong_FromLongLong(v);
    if (o == NULL) return -1;
    int r = PyObject_SetAttr(obj, name, o);
    Py_DECREF(o);
    return r;
}

static int ft_store_credit(Entry *e);

/* Write what this side counted back into the Python Flow (and its streams and skip credit). */
static int
ft_merge(FastTable *t, Entry *e)
{
    if (!e->dirty) return 0;
    PyObject *flow = e->flow;
    e->dirty = 0;
    for (int d = 0; d < 2; d++) {
        if (e->pk[d] && list_add(flow, s_packets, d, e->pk[d]) < 0) return -1;
        if (e->by[d] && list_add(flow, s_bytes, d, e->by[d]) < 0) return -1;
        if (e->pl[d] && list_add(flow, s_payload, d, e->pl[d]) < 0) return -1;
        e->pk[d] = e->by[d] = e->pl[d] = 0;
    }
    if (e->flags) {
        PyObject *f = PyObject_GetAttr(flow, s_flags);
        if (f == NULL) return -1;
        long old = PyLong_AsLong(f);
        Py_DECREF(f);
        if (old == -1 && PyErr_Occurred()) return -1;
        if ((old | e->flags) != old && set_long(flow, s_flags, old | e->flags) < 0) return -1;
        e->flags = 0;
    }
    if (e->has_ts) {
        PyObject *ts = PyFloat_FromDouble(e->ts_last);
        if (ts == NULL) return -1;
        int r = PyObject_SetAttr(flow, s_ts_last, ts);
        Py_DECREF(ts);
        if (r < 0) return -1;
        e->has_ts = 0;
    }
    if (e->delivered[0] || e->delivered[1]) {
        PyObject *streams = PyObject_GetAttr(flow, s_streams);
        if (streams == NULL) return -1;
        for (int d = 0; d < 2; d++) {
            if (!e->delivered[d]) continue;
            PyObject *s = PySequence_GetItem(streams, d);
            if (s == NULL) {
                Py_DECREF(streams);
                return -1;
            }
            int r = set_long(s, s_next_seq, e->next_seq[d]);
            PyObject *dv = r < 0 ? NULL : PyObject_GetAttr(s, s_delivered);
            long long old = dv ? PyLong_AsLongLong(dv) : -1;
            Py_XDECREF(dv);
            if (dv == NULL || (old == -1 && PyErr_Occurred()) || set_long(s, s_delivered, old + e->delivered[d]) < 0) {
                Py_DECREF(s);
                Py_DECREF(streams);
                return -1;
            }
            Py_DECREF(s);
            e->delivered[d] = 0;
        }
        Py_DECREF(streams);
    }
    if (e->credit != NULL && ft_store_credit(e) < 0) return -1;
    return 0;
}

static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* credit_left[d] <- skip_credit[1 - d] (from_client indexing); nothing used yet. */
static int
ft_load_credit(Entry *e)
{
    for (int d = 0; d < 2; d++) {
        int of = 0;
        long long c = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(e->credit, 1 - d), &of);
        if (c == -1 && PyErr_Occurred()) return -1;
        e->credit_left[d] = (of || c < 0) ? 0 : c;
        e->used[d] = 0;
    }
    return 0;
}

/* skip_credit[1 - d] <- what is left, for the directions that used some. */
static int
ft_store_credit(Entry *e)
{
    for (int d = 0; d < 2; d++) {
        if (!e->used[d]) continue;
        PyObject *v = PyLong_FromLongLong(e->credit_left[d]);
        if (v == NULL || PyList_SetItem(e->credit, 1 - d, v) < 0) return -1;
        e->used[d] = 0;
    }
    return 0;
}

static int
parse_addr(PyObject *a, uint8_t *out, int *af)
{
    memset(out, 0, 16);
    if (PyLong_Check(a)) {
        unsigned long v = PyLong_AsUnsignedLong(a);
        if (v == (unsigned long)-1 && PyErr_Occurred()) return -1;
        if (v > 0xFFFFFFFFUL) {
            PyErr_SetString(PyExc_ValueError, "IPv4 address out of range");
            return -1;
        }
        uint32_t be = __builtin_bswap32((uint32_t)v);
        memcpy(out, &be, 4);
        *af = 4;
        return 0;
    }
    if (PyBytes_Check(a) && PyBytes_GET_SIZE(a) == 16) {
        memcpy(out, PyBytes_AS_STRING(a), 16);
        *af = 6;
        return 0;
    }
    PyErr_SetString(PyExc_TypeError, "flow address must be an int (IPv4) or 16 bytes (IPv6)");
    return -1;
}

/* Register a Flow (or refresh its entry) from its current Python state. */
static int
ft_track(FastTable *t, PyObject *flow)
{
    PyObject *fo = PyObject_GetAttr(flow, s_fast);
    if (fo == NULL) return -1;
    long ix = PyLong_AsLong(fo);
    Py_DECREF(fo);
    if (ix == -1 && PyErr_Occurred()) return -1;
    if (ix == -2) return 0; /* ended: never again */
    Entry *e;
    if (ix < 0) {
        PyObject *key = PyObject_GetAttr(flow, s_key);
        if (key == NULL) return -1;
        Entry ne;
        memset(&ne, 0, sizeof ne);
        int afc = 0, afs = 0;
        long proto = -1, pc = -1, ps = -1;
        if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 5) {
            PyErr_SetString(PyExc_TypeError, "Flow.key must be a 5-tuple");
            Py_DECREF(key);
            return -1;
        }
        proto = PyLong_AsLong(PyTuple_GET_ITEM(key, 0));
        pc = PyLong_AsLong(PyTuple_GET_ITEM(key, 2));
        ps = PyLong_AsLong(PyTuple_GET_ITEM(key, 4));
        if (PyErr_Occurred() || parse_addr(PyTuple_GET_ITEM(key, 1), ne.addr_c, &afc) < 0 ||
            parse_addr(PyTuple_GET_ITEM(key, 3), ne.addr_s, &afs) < 0) {
            Py_DECREF(key);
            return -1;
        }
        Py_DECREF(key);
        if (afc != afs || proto < 0 || proto > 255 || pc < 0 || pc > 65535 || ps < 0 || ps > 65535) {
            PyErr_SetString(PyExc_ValueError, "malformed flow key");
            return -1;
        }
        ne.af = (uint8_t)afc;
        ne.proto = (uint8_t)proto;
        ne.port_c = (uint16_t)pc;
        ne.port_s = (uint16_t)ps;
        ne.hash = flow_hash((int)proto, afc, ne.addr_c, (int)pc, ne.addr_s, (int)ps);
        ne.next_free = -1;
        ne.flow = flow;
        Py_INCREF(flow);
        int nix = ft_insert(t, &ne);
        if (nix < 0) {
            Py_DECREF(flow);
            return -1;
        }
        if (set_long(flow, s_fast, nix) < 0) {
            ft_remove(t, nix);
            return -1;
        }
        e = &t->ents[nix];
    } else {
        if (ix >= t->n_ents || t->ents[ix].flow != flow) {
            PyErr_SetString(PyExc_RuntimeError, "Flow.fast does not name this flow's entry");
            return -1;
        }
        e = &t->ents[ix];
        if (ft_merge(t, e) < 0) return -1;
    }
    e->mode = M_OFF;
    Py_CLEAR(e->credit);
    PyObject *closed = PyObject_GetAttr(flow, s_closed_at);
    if (closed == NULL) return -1;
    int is_closed = closed != Py_None;
    Py_DECREF(closed);
    if (is_closed) return 0;
    if (e->proto != 6) {
        e->mode = M_OTHER;
        return 0;
    }
    int hs = attr_true(flow, s_handshake), syn = attr_true(flow, s_syn), sa = attr_true(flow, s_synack);
    if (hs < 0 || syn < 0 || sa < 0) return -1;
    e->ack_ok = hs || !(syn && sa);
    e->kind = K_PLAIN;
    e->seq_ok[0] = e->seq_ok[1] = 0;
    Py_CLEAR(e->data_cb);
    PyObject *app = PyObject_GetAttr(flow, s_app);
    if (app == NULL) return -1;
    int app_false = app == Py_False;
    Py_DECREF(app);
    if (app_false) {
        e->kind = K_COUNT;
        e->mode = M_TCP;
        return 0;
    }
    PyObject *analyzer = PyObject_GetAttr(flow, s_analyzer);
    if (analyzer == NULL) return -1;
    if (analyzer != Py_None) {
        /* In-order payload goes straight to analyzer.data, as TcpStream._push -> FlowTable._data. */
        e->data_cb = PyObject_GetAttr(analyzer, s_data);
        if (e->data_cb == NULL) {
            Py_DECREF(analyzer);
            return -1;
        }
        PyObject *credit = PyObject_GetAttr(flow, s_credit);
        if (credit == NULL) {
            Py_DECREF(analyzer);
            return -1;
        }
        if (PyList_CheckExact(credit) && PyList_GET_SIZE(credit) == 2) {
            e->kind = K_CREDIT;
            e->credit = credit; /* keeps the reference */
            if (ft_load_credit(e) < 0) {
                Py_DECREF(analyzer);
                return -1;
            }
        } else {
            Py_DECREF(credit);
        }
        PyObject *streams = PyObject_GetAttr(flow, s_streams);
        if (streams == NULL) {
            Py_DECREF(analyzer);
            return -1;
        }
        int ok = 1;
        for (int d = 0; d < 2 && PyList_CheckExact(streams) && PyList_GET_SIZE(streams) == 2; d++) {
            PyObject *st = PyList_GET_ITEM(streams, d);
            PyObject *ns = PyObject_GetAttr(st, s_next_seq);
            PyObject *held = ns ? PyObject_GetAttr(st, s_held) : NULL;
            if (held == NULL) {
                Py_XDECREF(ns);
                ok = 0;
                break;
            }
            int held_any = PyObject_IsTrue(held);
            if (held_any < 0) ok = 0;
            if (ok && ns != Py_None && !held_any && PyLong_Check(ns)) {
                unsigned long long v = PyLong_AsUnsignedLongLong(ns);
                if (v == (unsigned long long)-1 && PyErr_Occurred()) {
                    PyErr_Clear();
                } else if (v <= 0xFFFFFFFFULL) {
                    e->seq_ok[d] = 1;
                    e->next_seq[d] = (uint32_t)v;
                }
            }
            Py_DECREF(ns);
            Py_DECREF(held);
        }
        Py_DECREF(streams);
        if (!ok) {
            Py_DECREF(analyzer);
            return -1;
        }
    }
    Py_DECREF(analyzer);
    e->mode = M_TCP;
    return 0;
}

/* The packet's fate for a registered flow: 1 = counted here, 2 = counted here and its payload
 * goes to the analyzer (in order, as TcpStream would deliver it), 0 = Python must see it. */
static inline int
ft_fast(Entry *e, const Pkt *k, int d, double ts)
{
    if (e->mode == M_OTHER) {
        e->pk[d]++;
        e->by[d] += k->ip_len;
        if (k->has_payload) e->pl[d] += k->pay_end - k->pay_off;
        e->ts_last = ts;
        e->has_ts = e->dirty = 1;
        return 1;
    }
    if (e->mode != M_TCP || (k->flags & 0x07)) return 0;
    int fate = 1;
    if (!k->has_payload) {
        if (!e->ack_ok) return 0;
    } else {
        long long n = k->pay_end - k->pay_off;
        if (e->kind == K_COUNT) {
            if (!e->ack_ok) return 0;
            e->pl[d] += n + k->missing;
        } else {
            if (e->data_cb == NULL || k->missing || !e->seq_ok[d] || k->seq != e->next_seq[d]) return 0;
            if (e->kind == K_CREDIT && n <= e->credit_left[d]) {
                /* FlowTable's skip-credit path: in order, inside opaque data-set bytes */
                e->credit_left[d] -= n;
                e->used[d] += n;
            } else if (e->ack_ok) {
                fate = 2; /* FlowTable._tcp -> TcpStream.segment -> _push -> analyzer.data */
            } else {
                return 0;
            }
            e->next_seq[d] += (uint32_t)n;
            e->delivered[d] += n;
            e->pl[d] += n;
        }
    }
    e->pk[d]++;
    e->by[d] += k->ip_len;
    e->flags |= k->flags;
    e->ts_last = ts;
    e->has_ts = e->dirty = 1;
    return fate;
}

/* Hand in-order payload to the analyzer; its skip credit is settled around the call. */
static int
ft_deliver(FastTable *t, int ix, int d, PyObject *payload, double ts, PyObject *ts_obj)
{
    Entry *e = &t->ents[ix];
    if (e->credit != NULL && ft_store_credit(e) < 0) return -1;
    PyObject *cb = e->data_cb;
    Py_INCREF(cb);
    PyObject *tso = ts_obj;
    if (tso == NULL) {
        tso = PyFloat_FromDouble(ts);
        if (tso == NULL) {
            Py_DECREF(cb);
            return -1;
        }
    } else {
        Py_INCREF(tso);
    }
    PyObject *argv[3] = {d == 0 ? Py_True : Py_False, tso, payload};
    PyObject *r = PyObject_Vectorcall(cb, argv, 3, NULL);
    Py_DECREF(tso);
    Py_DECREF(cb);
    if (r == NULL) return -1;
    Py_DECREF(r);
    e = &t->ents[ix]; /* the analyzer cannot reach the table, but stay safe */
    if (e->credit != NULL && e->flow != NULL && ft_load_credit(e) < 0) return -1;
    return 0;
}

static int
read_next_sweep(FastTable *t, double *out)
{
    PyObject *v = PyObject_GetAttr(t->table, s_next_sweep);
    if (v == NULL) return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* One decoded IP packet. `frame` is a callable-free object factory: base memoryview + offsets
 * (pcap mode) or the caller's frame object (frames mode). */
static int
ft_packet(FastTable *t, const Pkt *k, double ts, double *next_sweep, PyObject *base, Py_ssize_t f_off,
          Py_ssize_t f_len, PyObject *frame_obj, PyObject *ts_obj, int mac_off)
{
    int d = 0, ix = -1;
    if (ts < *next_sweep && t->used) {
        uint8_t sa[16], da[16];
        const uint8_t *src, *dst;
        if (k->af == 4) {
            uint32_t s = __builtin_bswap32(k->src4), x = __builtin_bswap32(k->dst4);
            memcpy(sa, &s, 4);
            memcpy(da, &x, 4);
            src = sa;
            dst = da;
        } else {
            src = k->src6;
            dst = k->dst6;
        }
        uint64_t h = flow_hash(k->proto, k->af, src, k->sport, dst, k->dport);
        ix = ft_lookup(t, k->proto, k->af, src, k->sport, dst, k->dport, h, &d);
        if (ix >= 0) {
            int fate = ft_fast(&t->ents[ix], k, d, ts);
            if (fate == 1) {
                t->fast_packets++;
                return 0;
            }
            if (fate == 2) {
                t->delivered_packets++;
                PyObject *payload = frame_obj == NULL
                    ? PySequence_GetSlice(base, f_off + k->pay_off, f_off + k->pay_end)
                    : PySequence_GetSlice(frame_obj, k->pay_off, k->pay_end);
                if (payload == NULL) return -1;
                int r = ft_deliver(t, ix, d, payload, ts, ts_obj);
                Py_DECREF(payload);
                return r;
            }
        }
    }
    /* Slow: Python sees this packet, in order, after this flow's own counts are written back. */
    t->slow_packets++;
    if (ix >= 0) {
        if (ft_merge(t, &t->ents[ix]) < 0) return -1;
        t->ents[ix].mode = M_OFF;
    }
    PyObject *frame = frame_obj;
    if (frame == NULL) {
        frame = PySequence_GetSlice(base, f_off, f_off + f_len);
        if (frame == NULL) return -1;
    } else {
        Py_INCREF(frame);
    }
    PyObject *p = make_packet(k, ts, frame, mac_off);
    Py_DECREF(frame);
    if (p == NULL) return -1;
    if (ts_obj != NULL && !PyFloat_CheckExact(ts_obj)) {
        Py_INCREF(ts_obj);
        Py_SETREF(((PyTupleObject *)p)->ob_item[0], ts_obj);
    }
    PyObject *flow = PyObject_CallOneArg(t->one, p);
    Py_DECREF(p);
    if (flow == NULL) return -1;
    int r = flow == Py_None ? 0 : ft_track(t, flow);
    Py_DECREF(flow);
    if (r < 0) return -1;
    return read_next_sweep(t, next_sweep);
}

/* process_pcap(buf, start, count, swapped, units, linktype, bad) ->
 *     (ip_packets, wire_bytes, first_ts, last_ts, last_ip_ts) */
static PyObject *
ft_process_pcap(FastTable *t, PyObject *args)
{
    PyObject *bufobj, *bad;
    Py_ssize_t pos, count;
    int swap;
    double units;
    long lt;
    if (!PyArg_ParseTuple(args, "OnnpdlO!", &bufobj, &pos, &count, &swap, &units, &lt, &PyDict_Type, &bad))
        return NULL;
    LinkInfo li;
    if (link_info(lt, &li) < 0) return NULL;
    if (t->busy) {
        PyErr_SetString(PyExc_RuntimeError, "FastTable.process_* is not re-entrant");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(bufobj, &b, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *mv = PyMemoryView_FromObject(bufobj);
    if (mv == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    double next_sweep;
    long long counts[RS_COUNT] = {0};
    long long ip = 0, wire = 0;
    double first = 0.0, last = 0.0, last_ip = 0.0;
    int err = read_next_sweep(t, &next_sweep);
    const uint8_t *buf = b.buf;
    t->busy = 1;
    for (Py_ssize_t i = 0; !err && i < count; i++) {
        if (pos < 0 || pos + 16 > b.len || (Py_ssize_t)rd32(buf + pos + 8, swap) > b.len - pos - 16) {
            PyErr_SetString(PyExc_ValueError, "pcap record outside the buffer");
            err = 1;
            break;
        }
        Py_ssize_t incl = rd32(buf + pos + 8, swap);
        double ts = rec_ts(buf + pos, swap, units);
        wire += rd32(buf + pos + 12, swap);
        if (i == 0) first = ts;
        last = ts;
        Py_ssize_t f_off = pos + 16;
        pos = f_off + incl;
        Pkt k;
        int r = decode_frame(&li, buf + f_off, incl, &k);
        if (r) {
            counts[r]++;
            continue;
        }
        ip++;
        last_ip = ts;
        if (ft_packet(t, &k, ts, &next_sweep, mv, f_off, incl, NULL, NULL, li.mac_off) < 0) err = 1;
    }
    t->busy = 0;
    Py_DECREF(mv);
    PyBuffer_Release(&b);
    if (flush_bad(bad, counts) < 0 || err) return NULL;
    return Py_BuildValue("LLddd", ip, wire, first, last, last_ip);
}

/* process_frames(linktype, ts_list, frames, bad) -> (ip_packets, last_ip_ts or None) */
static PyObject *
ft_process_frames(FastTable *t, PyObject *args)
{
    long lt;
    PyObject *ts_list, *frames, *bad;
    if (!PyArg_ParseTuple(args, "lOOO!", &lt, &ts_list, &frames, &PyDict_Type, &bad)) return NULL;
    LinkInfo li;
    if (link_info(lt, &li) < 0) return NULL;
    if (t->busy) {
        PyErr_SetString(PyExc_RuntimeError, "FastTable.process_* is not re-entrant");
        return NULL;
    }
    PyObject *fseq = PySequence_Fast(frames, "frames must be a sequence");
    if (fseq == NULL) return NULL;
    PyObject *tseq = PySequence_Fast(ts_list, "ts must be a sequence");
    if (tseq == NULL) {
        Py_DECREF(fseq);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fseq);
    if (PySequence_Fast_GET_SIZE(tseq) < n) {
        PyErr_SetString(PyExc_ValueError, "fewer timestamps than frames");
        Py_DECREF(fseq);
        Py_DECREF(tseq);
        return NULL;
    }
    double next_sweep;
    long long counts[RS_COUNT] = {0};
    long long ip = 0;
    PyObject *last_ip = Py_None;
    int err = read_next_sweep(t, &next_sweep);
    t->busy = 1;
    for (Py_ssize_t i = 0; !err && i < n; i++) {
        PyObject *frame = PySequence_Fast_GET_ITEM(fseq, i);
        PyObject *tso = PySequence_Fast_GET_ITEM(tseq, i);
        Py_buffer fb;
        if (PyObject_GetBuffer(frame, &fb, PyBUF_SIMPLE) < 0) {
            err = 1;
            break;
        }
        Pkt k;
        int r = decode_frame(&li, fb.buf, fb.len, &k);
        if (r) {
            PyBuffer_Release(&fb);
            counts[r]++;
            continue;
        }
        double ts = PyFloat_AsDouble(tso);
        if (ts == -1.0 && PyErr_Occurred()) {
            PyBuffer_Release(&fb);
            err = 1;
            break;
        }
        ip++;
        last_ip = tso;
        /* the frame's buffer stays exported while Python looks at the packet (it must not change) */
        if (ft_packet(t, &k, ts, &next_sweep, NULL, 0, 0, frame, tso, li.mac_off) < 0) err = 1;
        PyBuffer_Release(&fb);
    }
    t->busy = 0;
    PyObject *res = NULL;
    if (flush_bad(bad, counts) >= 0 && !err) res = Py_BuildValue("LO", ip, last_ip);
    Py_DECREF(fseq);
    Py_DECREF(tseq);
    return res;
}

static PyObject *
ft_track_py(FastTable *t, PyObject *flow)
{
    if (ft_track(t, flow) < 0) return NULL;
    Py_RETURN_NONE;
}

/* release(flow): write back and forget the flow (it is ending); marks flow.fast = -2. */
static PyObject *
ft_release(FastTable *t, PyObject *flow)
{
    PyObject *fo = PyObject_GetAttr(flow, s_fast);
    if (fo == NULL) return NULL;
    long ix = PyLong_AsLong(fo);
    Py_DECREF(fo);
    if (ix == -1 && PyErr_Occurred()) return NULL;
    if (ix >= 0) {
        if (ix >= t->n_ents || t->ents[ix].flow != flow) {
            PyErr_SetString(PyExc_RuntimeError, "Flow.fast does not name this flow's entry");
            return NULL;
        }
        int r = ft_merge(t, &t->ents[ix]);
        ft_remove(t, (int)ix);
        if (r < 0) return NULL;
    }
    if (set_long(flow, s_fast, -2) < 0) return NULL;
    Py_RETURN_NONE;
}

/* merge_all(): every registered flow's Python state made current (before a sweep reads them). */
static PyObject *
ft_merge_all(FastTable *t, PyObject *unused)
{
    for (Py_ssize_t ix = 0; ix < t->n_ents; ix++) {
        Entry *e = &t->ents[ix];
        if (e->flow != NULL && e->dirty && ft_merge(t, e) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
ft_stats(FastTable *t, PyObject *unused)
{
    return Py_BuildValue("{s:n,s:L,s:L,s:L}", "flows", t->used, "fast_packets", t->fast_packets,
                         "delivered_packets", t->delivered_packets, "slow_packets", t->slow_packets);
}

static int
ft_init(FastTable *t, PyObject *args, PyObject *kw)
{
    PyObject *table;
    if (!PyArg_ParseTuple(args, "O", &table)) return -1;
    PyObject *one = PyObject_GetAttr(table, s_one);
    if (one == NULL) return -1;
    Py_XSETREF(t->one, one);
    Py_INCREF(table);
    Py_XSETREF(t->table, table);
    t->free_head = -1;
    return 0;
}

static int
ft_traverse(FastTable *t, visitproc visit, void *arg)
{
    Py_VISIT(t->table);
    Py_VISIT(t->one);
    for (Py_ssize_t i = 0; i < t->n_ents; i++) {
        Py_VISIT(t->ents[i].flow);
        Py_VISIT(t->ents[i].credit);
        Py_VISIT(t->ents[i].data_cb);
    }
    return 0;
}

static int
ft_clear(FastTable *t)
{
    Py_CLEAR(t->table);
    Py_CLEAR(t->one);
    for (Py_ssize_t i = 0; i < t->n_ents; i++) {
        Py_CLEAR(t->ents[i].flow);
        Py_CLEAR(t->ents[i].credit);
        Py_CLEAR(t->ents[i].data_cb);
    }
    t->n_ents = 0;
    t->used = t->deleted = 0;
    t->free_head = -1;
    if (t->slots) memset(t->slots, 0xFF, (t->mask + 1) * sizeof(int32_t));
    return 0;
}

static void
ft_dealloc(FastTable *t)
{
    PyObject_GC_UnTrack(t);
    ft_clear(t);
    PyMem_Free(t->ents);
    PyMem_Free(t->slots);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t
ft_len(FastTable *t)
{
    return t->used;
}

static PyMethodDef ft_methods[] = {
    {"process_pcap", (PyCFunction)ft_process_pcap, METH_VARARGS,
     "process_pcap(buf, start, count, swapped, units, linktype, bad) -> "
     "(ip_packets, wire_bytes, first_ts, last_ts, last_ip_ts)"},
    {"process_frames", (PyCFunction)ft_process_frames, METH_VARARGS,
     "process_frames(linktype, ts, frames, bad) -> (ip_packets, last_ip_ts or None)"},
    {"track", (PyCFunction)ft_track_py, METH_O, "track(flow): register or refresh a flow"},
    {"release", (PyCFunction)ft_release, METH_O, "release(flow): write back and forget (flow ends)"},
    {"merge_all", (PyCFunction)ft_merge_all, METH_NOARGS, "merge_all(): write back every flow's counts"},
    {"stats", (PyCFunction)ft_stats, METH_NOARGS, "stats() -> dict"},
    {NULL},
};

static PySequenceMethods ft_as_seq = {.sq_length = (lenfunc)ft_len};

static PyTypeObject FastTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sensor._fast._fastpath.FastTable",
    .tp_basicsize = sizeof(FastTable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Flow counters for registered flows, kept in C (see sensor/_fast/fallback.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ft_init,
    .tp_dealloc = (destructor)ft_dealloc,
    .tp_traverse = (traverseproc)ft_traverse,
    .tp_clear = (inquiry)ft_clear,
    .tp_methods = ft_methods,
    .tp_as_sequence = &ft_as_seq,
};

/* ---- DIMSE command sets ------------------------------------------------------------------------
 *
 * parse_command(buf, offset=0, length=None) -> Command. Reference semantics:
 * sensor/protocols/dicom/dimse.py:_parse_command_py (tests/test_command_fast.py compares both on
 * random bytes, random element layouts and pynetdicom's command sets). The Command class stays
 * Python's: dimse.py hands it over once with command_type(), and each instance is allocated as
 * Command.__new__(Command) would and its 14 slots filled by offset, which is what the reference's
 * 14 attribute stores do. Every read is bounds-checked against the buffer: input is hostile. */

#define CMD_SLOTS 13  /* element slots; one more slot, "error", follows them */
#define CMD_TEXT 3    /* the first CMD_TEXT slots hold UI/AE text, the rest US values */
#define CMD_TEXT_MAX 64

/* Element numbers (group 0000) in slot order: dimse.py's _ELEMENTS, checked by command_type(). */
static const unsigned cmd_elements[CMD_SLOTS] = {
    0x0002, 0x0003, 0x0600, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1020, 0x1021, 0x1022,
    0x1023,
};
static PyTypeObject *cmd_type;                /* the registered Command class (strong reference) */
static Py_ssize_t cmd_offset[CMD_SLOTS + 1];  /* byte offset of each slot in an instance */
static PyObject *s_bad_command, *s_no_command_field;

static inline int
cmd_slot(unsigned elem)
{
    switch (elem) {
    case 0x0002: return 0;
    case 0x0003: return 1;
    case 0x0600: return 2;
    case 0x0100: return 3;
    case 0x0110: return 4;
    case 0x0120: return 5;
    case 0x0700: return 6;
    case 0x0800: return 7;
    case 0x0900: return 8;
    case 0x1020: return 9;
    case 0x1021: return 10;
    case 0x1022: return 11;
    case 0x1023: return 12;
    }
    return -1;
}

static inline unsigned le16(const uint8_t *p) { return (unsigned)p[0] | ((unsigned)p[1] << 8); }
static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Decode p[0:n] into a new Command. */
static PyObject *
cmd_parse(const uint8_t *p, Py_ssize_t n)
{
    PyObject *vals[CMD_SLOTS + 1] = {NULL};  /* new references; NULL stands for None */
    PyObject *error = NULL;                  /* borrowed */
    Py_ssize_t off = 0;
    while (n - off >= 8) {  /* an element header fits */
        unsigned group = le16(p + off), elem = le16(p + off + 2);
        uint32_t length = le32(p + off + 4);
        off += 8;
        if (group != 0 || (uint64_t)length > (uint64_t)(n - off)) {
            error = s_bad_command;
            break;
        }
        int i = cmd_slot(elem);
        if (i >= CMD_TEXT) {
            PyObject *v;
            if (length == 2)
                v = PyLong_FromLong((long)le16(p + off));
            else if (length == 4)  /* some peers send UL for US-typed fields; tolerate it */
                v = PyLong_FromLong((long)(le32(p + off) & 0xFFFF));
            else {
                error = s_bad_command;  /* and go on, as the reference does; the slot keeps its value */
                goto next;
            }
            if (v == NULL) goto fail;
            Py_XSETREF(vals[i], v);
        }
        else if (i >= 0) {
            /* .decode("ascii", "replace").rstrip(" \x00") of at most 64 bytes: decoding maps bytes
             * one to one and only 0x20/0x00 become ' '/'\0', so stripping bytes first is the same. */
            Py_ssize_t k = length < CMD_TEXT_MAX ? (Py_ssize_t)length : CMD_TEXT_MAX;
            const uint8_t *s = p + off;
            while (k > 0 && (s[k - 1] == ' ' || s[k - 1] == 0)) k--;
            PyObject *v = PyUnicode_DecodeASCII((const char *)s, k, "replace");
            if (v == NULL) goto fail;
            Py_XSETREF(vals[i], v);
        }
    next:
        off += (Py_ssize_t)length;
    }
    if (off != n && error == NULL) error = s_bad_command;
    if (vals[3] == NULL && error == NULL) error = s_no_command_field;
    /* The allocation may run a collection, and so any finalizer, even one calling command_type():
     * the class and its offsets are taken before it. (The instance holds a reference to its class.) */
    PyTypeObject *tp = cmd_type;
    Py_ssize_t offs[CMD_SLOTS + 1];
    memcpy(offs, cmd_offset, sizeof(offs));
    Py_INCREF(tp);
    PyObject *obj = tp->tp_alloc(tp, 0);
    Py_DECREF(tp);
    if (obj == NULL) goto fail;
    vals[CMD_SLOTS] = error;
    for (int i = 0; i <= CMD_SLOTS; i++) {
        PyObject *v = vals[i] != NULL ? vals[i] : Py_None;
        if (i == CMD_SLOTS || vals[i] == NULL) Py_INCREF(v);  /* the error string is borrowed */
        *(PyObject **)((char *)obj + offs[i]) = v;           /* steals the value */
    }
    return obj;
fail:
    for (int i = 0; i < CMD_SLOTS; i++) Py_XDECREF(vals[i]);
    return NULL;
}

/* offset/length against a buffer of `size` bytes, as the reference checks them. */
static int
cmd_range(PyObject *offo, PyObject *leno, Py_ssize_t size, Py_ssize_t *off, Py_ssize_t *len)
{
    Py_ssize_t o = 0, l;
    if (offo != NULL) {
        o = PyNumber_AsSsize_t(offo, NULL);  /* huge values clip, and fail the range check */
        if (o == -1 && PyErr_Occurred()) return -1;
    }
    if (o < 0 || o > size) {
        PyErr_SetString(PyExc_ValueError, "offset outside the buffer");
        return -1;
    }
    if (leno == NULL || leno == Py_None)
        l = size - o;
    else {
        l = PyNumber_AsSsize_t(leno, NULL);
        if (l == -1 && PyErr_Occurred()) return -1;
        if (l < 0 || l > size - o) {
            PyErr_SetString(PyExc_ValueError, "length outside the buffer");
            return -1;
        }
    }
    *off = o;
    *len = l;
    return 0;
}

static const char *const cmd_kwlist[3] = {"buf", "offset", "length"};

/* parse_command(buf, offset=0, length=None): positional or keyword arguments, like the Python def. */
static PyObject *
parse_command(PyObject *mod, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL};
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "parse_command() takes from 1 to 3 positional arguments but %zd were given",
                     nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) a[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int j = 0;
        while (j < 3 && !(PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, cmd_kwlist[j]) == 0)) j++;
        if (j == 3) {
            PyErr_Format(PyExc_TypeError, "parse_command() got an unexpected keyword argument '%S'", name);
            return NULL;
        }
        if (a[j] != NULL) {
            PyErr_Format(PyExc_TypeError, "parse_command() got multiple values for argument '%s'", cmd_kwlist[j]);
            return NULL;
        }
        a[j] = args[nargs + k];
    }
    if (a[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "parse_command() missing 1 required positional argument: 'buf'");
        return NULL;
    }
    if (cmd_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "parse_command: command_type() was not called");
        return NULL;
    }
    Py_ssize_t off, len;
    PyObject *obj = a[0];
    if (PyBytes_CheckExact(obj)) {  /* the common case: no buffer export needed */
        if (cmd_range(a[1], a[2], PyBytes_GET_SIZE(obj), &off, &len) < 0) return NULL;
        return cmd_parse((const uint8_t *)PyBytes_AS_STRING(obj) + off, len);
    }
    Py_buffer b;
    PyObject *copy = NULL;
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE) < 0) {
        if (!PyObject_CheckBuffer(obj)) return NULL;  /* not bytes-like: the TypeError stands */
        /* a non-contiguous buffer (e.g. a strided memoryview): its bytes in C order, as bytes() gives */
        PyErr_Clear();
        copy = PyBytes_FromObject(obj);  /* a buffer exporter, so this is its buffer's bytes */
        if (copy == NULL) return NULL;
        if (PyObject_GetBuffer(copy, &b, PyBUF_SIMPLE) < 0) {
            Py_DECREF(copy);
            return NULL;
        }
    }
    PyObject *res = NULL;
    if (cmd_range(a[1], a[2], b.len, &off, &len) == 0) res = cmd_parse((const uint8_t *)b.buf + off, len);
    PyBuffer_Release(&b);
    Py_XDECREF(copy);
    return res;
}

/* command_type(cls, slot_names, elements, n_text): register dimse.Command. Checks that cls is a
 * plain __slots__ class whose instances object.__new__ makes, that the named slots are its own
 * object slots, and that dimse.py's element table is the one compiled here. */
static PyObject *
command_type(PyObject *mod, PyObject *args)
{
    PyObject *cls, *names, *elements;
    int n_text;
    if (!PyArg_ParseTuple(args, "O!O!O!i", &PyType_Type, &cls, &PyTuple_Type, &names, &PyTuple_Type, &elements,
                          &n_text))
        return NULL;
    PyTypeObject *tp = (PyTypeObject *)cls;
    if (PyTuple_GET_SIZE(names) != CMD_SLOTS + 1 || PyTuple_GET_SIZE(elements) != CMD_SLOTS || n_text != CMD_TEXT)
        goto mismatch;
    for (int i = 0; i < CMD_SLOTS; i++) {
        long e = PyLong_AsLong(PyTuple_GET_ITEM(elements, i));
        if (e == -1 && PyErr_Occurred()) return NULL;
        if (e != (long)cmd_elements[i]) goto mismatch;
    }
    if (tp->tp_itemsize != 0 || tp->tp_new != PyBaseObject_Type.tp_new || tp->tp_alloc == NULL
        || (tp->tp_flags & Py_TPFLAGS_IS_ABSTRACT)) {
        PyErr_SetString(PyExc_TypeError, "command_type: not a plain __slots__ class");
        return NULL;
    }
    Py_ssize_t offs[CMD_SLOTS + 1];
    for (int i = 0; i <= CMD_SLOTS; i++) {
        PyObject *d = PyObject_GetAttr(cls, PyTuple_GET_ITEM(names, i));
        if (d == NULL) return NULL;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyDescrObject *)d)->d_type == tp;
        if (ok) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            offs[i] = m->offset;
            ok = m->type == T_OBJECT_EX && !(m->flags & READONLY) && m->offset >= (Py_ssize_t)sizeof(PyObject)
                 && m->offset <= tp->tp_basicsize - (Py_ssize_t)sizeof(PyObject *);
            for (int j = 0; ok && j < i; j++) ok = offs[j] != offs[i];
        }
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "command_type: %R is not an object slot of %R", PyTuple_GET_ITEM(names, i),
                         cls);
            return NULL;
        }
    }
    memcpy(cmd_offset, offs, sizeof(offs));
    Py_INCREF(cls);
    Py_XSETREF(cmd_type, tp);
    Py_RETURN_NONE;
mismatch:
    PyErr_SetString(PyExc_ValueError,
                    "command_type: dimse.py's command layout (slots, elements, text slots) is not the compiled one");
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"scan_pcap", scan_pcap, METH_VARARGS,
     "scan_pcap(buf, pos, swapped, limit, max_records) -> (pos, count, captured_bytes, status)"},
    {"parse_pcap", parse_pcap, METH_VARARGS,
     "parse_pcap(buf, start, count, swapped, units) -> (ts, frames, wirelen)"},
    {"pcap_ts", pcap_ts, METH_VARARGS, "pcap_ts(buf, start, count, swapped, units) -> [ts]"},
    {"decode", decode, METH_VARARGS, "decode(linktype, ts, frames, bad) -> [Packet tuples]"},
    {"parse_command", (PyCFunction)(void (*)(void))parse_command, METH_FASTCALL | METH_KEYWORDS,
     "parse_command(buf, offset=0, length=None)\n--\n\n"
     "Decode the DIMSE command set buf[offset:offset+length] into a Command (see dimse.py)."},
    {"command_type", command_type, METH_VARARGS,
     "command_type(cls, slot_names, elements, n_text): register dimse.Command for parse_command"},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "sensor._fast._fastpath",
    "Compiled per-packet loop; sensor/_fast/fallback.py is the reference.", -1, module_methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    for (int r = 1; r < RS_COUNT; r++) INTERN(reason_str[r], reason_names[r]);
    INTERN(s_fast, "fast");
    INTERN(s_analyzer, "analyzer");
    INTERN(s_data, "data");
    INTERN(s_key, "key");
    INTERN(s_closed_at, "closed_at");
    INTERN(s_handshake, "handshake");
    INTERN(s_syn, "syn");
    INTERN(s_synack, "synack");
    INTERN(s_app, "app");
    INTERN(s_credit, "credit");
    INTERN(s_streams, "streams");
    INTERN(s_next_seq, "next_seq");
    INTERN(s_held, "held");
    INTERN(s_delivered, "delivered");
    INTERN(s_packets, "packets");
    INTERN(s_bytes, "bytes");
    INTERN(s_payload, "payload");
    INTERN(s_flags, "flags");
    INTERN(s_ts_last, "ts_last");
    INTERN(s_next_sweep, "_next_sweep");
    INTERN(s_one, "_one");
    INTERN(s_bad_command, "bad_command_element");
    INTERN(s_no_command_field, "no_command_field");
    if (PyType_Ready(&FastTableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&FastTableType);
    if (PyModule_AddObject(m, "FastTable", (PyObject *)&FastTableType) < 0) {
        Py_DECREF(&FastTableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
