"""Block-wise flow assembly with numpy: the same flows as ``ReferenceAssembler``, without per-packet Python.

Per block of packets:
1. every usable packet gets its flow key (canonical endpoints in bidirectional mode) and a stable sort groups the
   packets of each key in capture order (a "segment");
2. a short Python loop per segment visits only the packets where something can happen (the segment's first packet,
   idle gaps, TCP SYN/FIN/RST, the active-timeout deadline found by binary search) and marks where flows start;
3. per-run aggregates (a run = the packets of one flow inside the block) come from ``np.*.reduceat``/``bincount``
   and are merged into a column table of active flows (``FlowTable``) with vectorised indexing; with
   ``max_packets`` only each run's prefix that fits under the cap is aggregated (the rest is counted as
   ``over_packet_cap``), while every packet of the run still moves the flow's idle clock and TCP close state;
4. the slots of the first ``num_packets`` packets of each flow are gathered and anonymised for the whole block at once.
"""

import math
import socket

import numpy as np

from .core import NUM_FLOW_STATS, SKIP_REASONS, FlowOptions, FlowRecord, PacketAccounting
from .dissect import OK, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, PacketBatch
from .anonymize import mask_cleartext_names
from .flows import STEP_PACKETS, packet_slot

# Accumulator columns of the flow table and their dtypes: only what the 27 statistics and the kept packets need,
# in the narrowest type that holds it (counters and sums that can grow stay 64-bit).
_COLUMNS = {
    **dict.fromkeys(
        (
            "n",
            "bytes",
            "sumsq",
            "fwd_n",
            "fwd_bytes",
            "pay_sum",
            "zero_pay",
            "syn",
            "fin",
            "rst",
            "psh",
            "dir_changes",
            "order",
        ),
        np.int64,
    ),
    **dict.fromkeys(("lmin", "lmax", "bwd_max", "pay_max", "sport", "dport"), np.int32),
    **dict.fromkeys(("ipv", "last_dir"), np.int8),
    "nslots": np.int16,
    "proto": np.uint8,
    **dict.fromkeys(
        ("start", "last", "tmax", "iat_sum", "iat_sumsq", "iat_min", "iat_max", "fwd_iat_sum", "last_fwd"), np.float64
    ),
    **dict.fromkeys(("init_lo", "closed", "fin_fwd", "fin_bwd", "used"), bool),
}
_FRESH = {"lmin": np.iinfo(np.int32).max, "iat_min": np.inf, "last_fwd": np.nan}  # initial values other than 0


class _Stack:
    """A stack of free row numbers in one int64 array (a Python list would cost ~36 bytes per entry)."""

    def __init__(self):
        self.items = np.empty(0, dtype=np.int64)
        self.top = 0

    def __len__(self) -> int:
        return self.top

    def push(self, values: np.ndarray) -> None:
        need = self.top + len(values)
        if need > len(self.items):
            grown = np.empty(max(need, 2 * len(self.items)), dtype=np.int64)
            grown[: self.top] = self.items[: self.top]
            self.items = grown
        self.items[self.top : need] = values
        self.top = need

    def pop(self, count: int) -> np.ndarray:
        self.top -= count
        return self.items[self.top : self.top + count][::-1].copy()


class FlowTable:
    """Accumulators of all open flows as numpy columns (one row per flow; rows are recycled).

    The slots (anonymised bytes) of a flow's first packets live in a separate pool, one pool row per packet that
    exists: a one-packet flow (a scan probe) holds one slot, not ``num_packets``. ``slot_index[row, i]`` is the
    pool row of the flow's ``i``-th packet (-1: none yet).
    """

    def __init__(self, options: FlowOptions, capacity: int = 64):
        self.k = options.num_packets
        self.slot_bytes = options.slot_bytes
        self.capacity = 0
        self.free = _Stack()
        self.slot_pool = np.zeros((0, self.slot_bytes), dtype=np.uint8)
        self.free_slots = _Stack()
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = self.capacity

        def grow(name, shape, dtype):
            new = np.zeros((capacity, *shape), dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)

        for name, dtype in _COLUMNS.items():
            grow(name, (), dtype)
        grow("src", (16,), np.uint8)
        grow("dst", (16,), np.uint8)
        grow("slot_index", (self.k,), np.int32)
        grow("lens", (self.k,), np.int32)
        grow("iats", (self.k,), np.float32)
        grow("dirs", (self.k,), np.int8)
        grow("seq_base", (2,), np.int64)  # per direction (0: forward, 1: backward); -1 = unset
        grow("ack_base", (2,), np.int64)
        grow("key", (), np.dtype((np.void, 48)))  # the flow's key in the assembler's dict of open flows
        self.free.push(np.arange(capacity - 1, old - 1, -1, dtype=np.int64))
        self.capacity = capacity

    def allocate(self, count: int) -> np.ndarray:
        while len(self.free) < count:
            self._grow(max(64, self.capacity * 3 // 2))  # 1.5x: less slack than doubling under the open-flow cap
        rows = self.free.pop(count)
        for name in _COLUMNS:
            getattr(self, name)[rows] = _FRESH.get(name, 0)
        self.slot_index[rows] = -1
        self.lens[rows] = 0
        self.iats[rows] = 0
        self.dirs[rows] = 0
        self.seq_base[rows] = -1
        self.ack_base[rows] = -1
        self.used[rows] = True
        return rows

    def allocate_slots(self, count: int) -> np.ndarray:
        """``count`` free rows of the slot pool."""
        if len(self.free_slots) < count:
            old = len(self.slot_pool)
            size = max(old * 3 // 2, old + count, 64)
            pool = np.zeros((size, self.slot_bytes), dtype=np.uint8)
            pool[:old] = self.slot_pool
            self.slot_pool = pool
            self.free_slots.push(np.arange(size - 1, old - 1, -1, dtype=np.int64))
        return self.free_slots.pop(count)

    def payload(self, rows: np.ndarray) -> np.ndarray:
        """``uint8 [len(rows), k * slot_bytes]``: the kept packets' slots of ``rows``, zero where absent."""
        out = np.zeros((len(rows), self.k, self.slot_bytes), dtype=np.uint8)
        index = self.slot_index[rows]
        present = index >= 0
        out[present] = self.slot_pool[index[present]]
        return out.reshape(len(rows), -1)

    def release(self, rows: np.ndarray) -> None:
        self.used[rows] = False
        slots = self.slot_index[rows]
        self.free_slots.push(slots[slots >= 0])
        self.free.push(rows)

    def stats(self, rows: np.ndarray) -> np.ndarray:
        """The 27 statistics of ``rows`` (same formulas as ``FlowState.stats``)."""
        n = self.n[rows].astype(np.float64)
        total = self.bytes[rows].astype(np.float64)
        fwd_n = self.fwd_n[rows].astype(np.float64)
        fwd_b = self.fwd_bytes[rows].astype(np.float64)
        bwd_n = n - fwd_n
        mean = total / n
        duration = self.tmax[rows] - self.start[rows]
        n_iat = n - 1
        s = np.zeros((len(rows), NUM_FLOW_STATS), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            s[:, 0] = n
            s[:, 1] = total
            s[:, 2] = mean
            s[:, 3] = np.sqrt(np.maximum(self.sumsq[rows] / n - mean * mean, 0.0))
            s[:, 4] = self.lmin[rows]
            s[:, 5] = self.lmax[rows]
            s[:, 6] = np.where(fwd_n > 0, fwd_b / fwd_n, 0.0)
            s[:, 7] = np.where(bwd_n > 0, (total - fwd_b) / bwd_n, 0.0)
            s[:, 8] = self.bwd_max[rows]
            s[:, 9] = duration
            has_iat = n_iat > 0
            iat_mean = np.where(has_iat, self.iat_sum[rows] / n_iat, 0.0)
            s[:, 10] = iat_mean
            s[:, 11] = np.where(
                has_iat, np.sqrt(np.maximum(self.iat_sumsq[rows] / n_iat - iat_mean * iat_mean, 0.0)), 0.0
            )
            s[:, 12] = np.where(has_iat, self.iat_min[rows], 0.0)
            s[:, 13] = np.where(has_iat, self.iat_max[rows], 0.0)
            s[:, 14] = np.where(fwd_n > 1, self.fwd_iat_sum[rows] / (fwd_n - 1), 0.0)
            s[:, 15] = self.pay_sum[rows] / n
            s[:, 16] = self.pay_max[rows]
            s[:, 17] = self.zero_pay[rows] / n
            s[:, 18] = np.where(duration > 0, n / duration, 0.0)
            s[:, 19] = np.where(duration > 0, total / duration, 0.0)
            s[:, 20] = self.syn[rows]
            s[:, 21] = self.fin[rows]
            s[:, 22] = self.rst[rows]
            s[:, 23] = self.psh[rows]
            s[:, 24] = fwd_n / n
            s[:, 25] = np.where(total > 0, fwd_b / total, 0.0)
            s[:, 26] = self.dir_changes[rows]
        return s.astype(np.float32)


def _be_u64(addr: np.ndarray, start: int) -> np.ndarray:
    """Big-endian uint64 from 8 columns of a uint8 [n, 16] array (so integer order = byte order)."""
    return np.ascontiguousarray(addr[:, start : start + 8]).view(">u8").reshape(-1).astype(np.uint64)


def _windows(data: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Copy ``data[s : s + width]`` for every start (bytes past the end of ``data`` are undefined, callers mask)."""
    out = np.empty((len(starts), width), dtype=np.uint8)
    if width == 0 or len(starts) == 0:
        return out
    limit = len(data) - width
    inside = starts <= limit
    if limit >= 0 and inside.all():
        return np.lib.stride_tricks.sliding_window_view(data, width)[starts]
    if limit >= 0:
        out[inside] = np.lib.stride_tricks.sliding_window_view(data, width)[starts[inside]]
    out[~inside] = data.take(starts[~inside, None] + np.arange(width), mode="clip")
    return out


def _key_hash(keys: np.ndarray) -> np.ndarray:
    """64-bit multiply-xor hash of the six key words of every packet."""
    h = keys[:, 0] * np.uint64(0x9E3779B97F4A7C15)
    for c in range(1, keys.shape[1]):
        h = (h ^ keys[:, c]) * np.uint64(0xBF58476D1CE4E5B9)
    return h


def _active_deadline(clock_s: np.ndarray, j: int, s1: int, start: float, active_t: float) -> int:
    """First position in ``[j, s1)`` where the (non-decreasing) clock has passed ``start`` by more than ``active_t``,
    or ``s1``. The test is the reference's ``clock - start > active_t``: a binary search on ``start + active_t``,
    which can round the other way, then a fix-up of the positions at the edge."""
    if clock_s[s1 - 1] - start <= active_t:
        return s1
    pos = j + int(np.searchsorted(clock_s[j:s1], start + active_t, side="right"))
    while pos > j and clock_s[pos - 1] - start > active_t:
        pos -= 1
    while pos < s1 and not clock_s[pos] - start > active_t:
        pos += 1
    return pos


def _put_be32(block: np.ndarray, rows: np.ndarray, col: np.ndarray, value: np.ndarray) -> None:
    """Write big-endian 32-bit ``value`` at columns ``col..col+3`` of ``block`` rows (columns past the end dropped)."""
    width = block.shape[1]
    for b in range(4):
        c = col + b
        inside = c < width
        block[rows[inside], c[inside]] = ((value[inside] >> (8 * (3 - b))) & 0xFF).astype(np.uint8)


class FastAssembler:
    """Block-wise assembler; produces the same flows as ``ReferenceAssembler``."""

    def __init__(self, options: FlowOptions, accounting: PacketAccounting, source_file: str):
        self.options = options
        self.accounting = accounting
        self.source_file = source_file
        self.table = FlowTable(options)
        self.active: dict = {}  # key bytes -> row
        self.clock = -math.inf
        self.ready: list[int] = []  # rows whose flow ended
        self.next_order = 0

    # ------------------------------------------------------------------ public protocol (see flows._AssemblerBase)
    def evict_over_cap(self) -> None:
        """End the flows over ``max_open_flows`` whose last packet is oldest (ties: first packet order)."""
        cap = self.options.max_open_flows
        excess = len(self.active) - cap
        if not cap or excess <= 0:
            return
        t = self.table
        rows = np.fromiter(self.active.values(), dtype=np.int64, count=len(self.active))
        victims = rows[np.lexsort((t.order[rows], t.last[rows]))[:excess]]
        for key in t.key[victims].tolist():
            del self.active[key]
        self.ready.extend(victims.tolist())
        self.accounting.flows_evicted_by_cap += excess

    def restart_clock(self) -> None:
        """Time went backwards by more than the idle timeout: end every open flow and start the clock afresh."""
        self.finish()
        self.clock = -math.inf
        self.accounting.time_jumps_back += 1

    def expire(self) -> None:
        t = self.table
        opts = self.options
        rows = np.flatnonzero(
            t.used
            & ~self._ready_mask()
            & ((self.clock - t.last > opts.idle_timeout) | (self.clock - t.start > opts.active_timeout))
        )
        for key in t.key[rows].tolist():
            del self.active[key]
        self.ready.extend(rows.tolist())

    def _ready_mask(self) -> np.ndarray:
        mask = np.zeros(self.table.capacity, dtype=bool)
        if self.ready:
            mask[self.ready] = True
        return mask

    def finish(self) -> None:
        self.ready.extend(self.active.values())
        self.active = {}

    DRAIN_ROWS = 4096  # records are built this many at a time: a huge emission (end of a scan) stays small

    def drain(self):
        if not self.ready:
            return
        t = self.table
        rows = np.asarray(self.ready, dtype=np.int64)
        self.ready = []
        rows = rows[np.argsort(t.order[rows], kind="stable")]
        for lo in range(0, len(rows), self.DRAIN_ROWS):
            part = rows[lo : lo + self.DRAIN_ROWS]
            records = self._records(part)
            t.release(part)
            yield from records

    def _records(self, rows: np.ndarray) -> list:
        """The `FlowRecord`s of ended flows ``rows`` (flows under ``min_packets`` counted as skipped instead)."""
        t = self.table
        short = t.n[rows] < self.options.min_packets
        if short.any():
            self.accounting.skip("short_flow", int(t.n[rows[short]].sum()))
        keep = rows[~short]
        self.accounting.packets_in_flows += int(t.n[keep].sum())
        self.accounting.flows += len(keep)
        stats = t.stats(keep)
        payload = t.payload(keep)
        ipv = t.ipv[keep].tolist()
        src, dst = t.src[keep].tobytes(), t.dst[keep].tobytes()
        ntop = socket.inet_ntop
        families = {4: (socket.AF_INET, 4), 6: (socket.AF_INET6, 16)}
        src_ip, dst_ip = [], []
        for i, v in enumerate(ipv):
            family, width = families[v]
            src_ip.append(ntop(family, src[16 * i : 16 * i + width]))
            dst_ip.append(ntop(family, dst[16 * i : 16 * i + width]))
        name = self.source_file
        return [
            FlowRecord(pay, lens, iats, dirs, st, sip, dip, sp, dp, pr, t0, t1, n, nb, name)
            for pay, lens, iats, dirs, st, sip, dip, sp, dp, pr, t0, t1, n, nb in zip(
                payload,
                t.lens[keep],
                t.iats[keep],
                t.dirs[keep],
                stats,
                src_ip,
                dst_ip,
                t.sport[keep].tolist(),
                t.dport[keep].tolist(),
                t.proto[keep].tolist(),
                t.start[keep].tolist(),
                t.tmax[keep].tolist(),
                t.n[keep].tolist(),
                t.bytes[keep].tolist(),
            )  # fmt: skip
        ]

    # ------------------------------------------------------------------ one block
    def feed(self, batch: PacketBatch) -> None:
        """Assemble a block of packets (without the end-of-step work `iter_flows` does between steps)."""
        for _ in self.feed_steps(batch):
            pass

    def feed_steps(self, batch: PacketBatch):
        """Assemble a block ``STEP_PACKETS`` usable packets at a time (counted from the block's start and from each
        clock restart, as in the reference engine), yielding after every full step."""
        counts = np.bincount(batch.reason, minlength=len(SKIP_REASONS) + 1)
        for code in range(1, len(counts)):
            if counts[code]:
                self.accounting.skip(SKIP_REASONS[code - 1], int(counts[code]))
        ok = np.flatnonzero(batch.reason == OK)
        if len(ok) == 0:
            return
        bounds = [0, *self._clock_restarts(batch.timestamp[ok]), len(ok)]
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if i:
                self.restart_clock()
            for start in range(lo, hi, STEP_PACKETS):
                end = min(hi, start + STEP_PACKETS)
                self._feed_packets(batch, ok[start:end])
                if end - start == STEP_PACKETS:
                    yield

    def _clock_restarts(self, ts: np.ndarray) -> list:
        """Positions where the time goes back by more than the idle timeout (the clock restarts there)."""
        idle = self.options.idle_timeout
        # without restarts the clock is never lower than with them, so this finds every restart (and maybe more)
        before = np.maximum.accumulate(np.concatenate(([self.clock], ts[:-1])))
        candidates = np.flatnonzero(ts < before - idle)
        if not len(candidates):
            return []
        first = int(candidates[0])
        cuts, clock = [], float(before[first])
        for i, t in enumerate(ts[first:].tolist(), start=first):
            if t < clock - idle:
                cuts.append(i)
                clock = t
            elif t > clock:
                clock = t
        return cuts

    def _feed_packets(self, batch: PacketBatch, ok: np.ndarray) -> None:
        """Assemble the usable packets ``ok`` (batch indices, capture order; no restart of the clock among them)."""
        opts = self.options
        t = self.table
        m = len(ok)
        ts = batch.timestamp[ok]
        clock = np.maximum.accumulate(ts)
        if self.clock > -math.inf:
            clock = np.maximum(clock, self.clock)
        self.clock = float(clock[-1])

        # ---- step 1: keys
        proto = batch.protocol[ok]
        src = batch.src_addr[ok]
        dst = batch.dst_addr[ok]
        sport = batch.src_port[ok].astype(np.uint64)
        dport = batch.dst_port[ok].astype(np.uint64)
        a_hi, a_lo = _be_u64(src, 0), _be_u64(src, 8)
        b_hi, b_lo = _be_u64(dst, 0), _be_u64(dst, 8)
        if opts.bidirectional:
            b_lt_a = (b_hi < a_hi) | ((b_hi == a_hi) & ((b_lo < a_lo) | ((b_lo == a_lo) & (dport < sport))))
            from_lo = ~b_lt_a
        else:
            from_lo = np.ones(m, dtype=bool)
        keys = np.empty((m, 6), dtype=np.uint64)
        keys[:, 0] = (batch.ip_version[ok].astype(np.uint64) << np.uint64(8)) | proto.astype(np.uint64)
        keys[:, 1] = np.where(from_lo, a_hi, b_hi)
        keys[:, 2] = np.where(from_lo, a_lo, b_lo)
        keys[:, 3] = (np.where(from_lo, sport, dport) << np.uint64(16)) | np.where(from_lo, dport, sport)
        keys[:, 4] = np.where(from_lo, b_hi, a_hi)
        keys[:, 5] = np.where(from_lo, b_lo, a_lo)
        # group packets by key: a stable sort on a 64-bit hash of the key (much cheaper than sorting the 48-byte
        # keys); equal hashes are verified against the keys, and a collision falls back to sorting the keys
        h = _key_hash(keys)
        order = np.argsort(h, kind="stable")
        h_s = h[order]
        keys_s = keys[order]
        new_key = np.empty(m, dtype=bool)
        new_key[0] = True
        new_key[1:] = h_s[1:] != h_s[:-1]
        same_h = np.flatnonzero(~new_key)
        if len(same_h) and not (keys_s[same_h] == keys_s[same_h - 1]).all():  # hash collision (never seen)
            kv = keys.view(np.dtype((np.void, 48))).reshape(m)
            _, inv = np.unique(kv, return_inverse=True)
            order = np.argsort(inv.reshape(-1), kind="stable")
            keys_s = keys[order]
            new_key[1:] = (keys_s[1:] != keys_s[:-1]).any(axis=1)
        orig = ok[order]  # batch index of each sorted packet
        kid_s = np.cumsum(new_key) - 1
        ukeys = np.ascontiguousarray(keys_s[new_key]).view(np.dtype((np.void, 48))).reshape(-1)

        ts_s = ts[order]
        clock_s = clock[order]
        flags_s = batch.tcp_flags[orig]
        tcp_s = batch.protocol[orig] == 6
        from_lo_s = from_lo[order]
        length_s = batch.ip_length[orig]
        pay_s = batch.payload_length[orig]
        seg_start = np.empty(m, dtype=bool)
        seg_start[0] = True
        seg_start[1:] = kid_s[1:] != kid_s[:-1]
        seg_starts = np.flatnonzero(seg_start)
        seg_ends = np.append(seg_starts[1:], m)
        idle_gap = np.zeros(m, dtype=bool)
        idle_gap[1:] = (clock_s[1:] - ts_s[:-1] > opts.idle_timeout) & ~seg_start[1:]
        fresh_syn = tcp_s & ((flags_s & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        if opts.tcp_close:
            closing = tcp_s & ((flags_s & (TCP_FIN | TCP_RST)) != 0)
        else:
            closing = np.zeros(m, dtype=bool)
        event_pos = np.flatnonzero(idle_gap | fresh_syn | closing)

        # ---- step 2: flow starts (Python over the segments where something can happen, and their events only)
        n_seg = len(seg_starts)
        run_start = seg_start.copy()
        run_init = np.zeros(m, dtype=bool)  # at a run start: the initiator is the "lo" endpoint
        run_init[seg_starts] = from_lo_s[seg_starts]
        active = self.active
        idle_t, active_t = opts.idle_timeout, opts.active_timeout
        bidir, tcp_close = opts.bidirectional, opts.tcp_close
        # segment k holds the packets of unique key k (in the order of the grouping sort)
        kb = ukeys.tobytes()
        seg_keys = [kb[48 * i : 48 * i + 48] for i in range(n_seg)]
        seg_rows = np.fromiter((active.get(key, -1) for key in seg_keys), dtype=np.int64, count=n_seg)
        # per segment, what its last run carries into the table: (closed, fin_fwd, fin_bwd) and where it starts
        seg_closed = np.zeros(n_seg, dtype=bool)
        seg_fin_fwd = np.zeros(n_seg, dtype=bool)
        seg_fin_bwd = np.zeros(n_seg, dtype=bool)
        seg_last_start = seg_starts.copy()
        ev_lo = np.searchsorted(event_pos, seg_starts)
        ev_hi = np.searchsorted(event_pos, seg_ends)
        # a new flow whose only event, if any, is a SYN on its first packet and that stays within the active
        # timeout: nothing can happen in it (the common case of a scan: one new flow per packet)
        first_event_quiet = (
            (ev_hi - ev_lo == 1)
            & (event_pos[np.minimum(ev_lo, len(event_pos) - 1)] == seg_starts)
            & ~closing[seg_starts]
            if len(event_pos)
            else np.zeros(n_seg, dtype=bool)
        )
        quiet = (
            (seg_rows < 0)
            & ((ev_hi == ev_lo) | first_event_quiet)
            & (clock_s[seg_ends - 1] - ts_s[seg_starts] <= active_t)
        )
        busy = np.flatnonzero(~quiet).tolist()
        if busy:
            ev_lo, ev_hi = ev_lo.tolist(), ev_hi.tolist()
            event_list = event_pos.tolist()
            t_last, t_start, t_closed = t.last, t.start, t.closed
            seg_s0, seg_s1 = seg_starts.tolist(), seg_ends.tolist()
            clock_first = clock_s[seg_starts].tolist()
            clock_last = clock_s[seg_ends - 1].tolist()
            ts_first = ts_s[seg_starts].tolist()
            lo_first = from_lo_s[seg_starts].tolist()
            syn_first = fresh_syn[seg_starts].tolist()

        def new_run(j, s1):
            """A flow starts at sorted position ``j``: (its start, initiator side, active-timeout deadline)."""
            run_start[j] = True
            start, init_lo = float(ts_s[j]), bool(from_lo_s[j])
            run_init[j] = init_lo
            return start, init_lo, _active_deadline(clock_s, j, s1, start, active_t)

        for s_idx in busy:
            s0, s1 = seg_s0[s_idx], seg_s1[s_idx]
            row = int(seg_rows[s_idx])
            c0 = clock_first[s_idx]
            if row >= 0 and (
                c0 - t_last[row] > idle_t or c0 - t_start[row] > active_t or (t_closed[row] and syn_first[s_idx])
            ):
                del active[seg_keys[s_idx]]
                self.ready.append(row)
                row = -1
                seg_rows[s_idx] = -1
            if row < 0:
                start = ts_first[s_idx]
                init_lo = lo_first[s_idx]
                closed = fin_fwd = fin_bwd = False
            else:
                start, init_lo = float(t_start[row]), bool(t.init_lo[row])
                closed, fin_fwd, fin_bwd = bool(t_closed[row]), bool(t.fin_fwd[row]), bool(t.fin_bwd[row])
            run_init[s0] = init_lo
            last_run = s0
            evs = event_list[ev_lo[s_idx] : ev_hi[s_idx]]
            if evs or clock_last[s_idx] - start > active_t:
                deadline = _active_deadline(clock_s, s0, s1, start, active_t)
                k = 0
                n_ev = len(evs)
                while True:
                    nxt = evs[k] if k < n_ev else s1
                    if deadline < s1 and deadline <= nxt and deadline != last_run:
                        last_run = deadline
                        start, init_lo, deadline = new_run(deadline, s1)
                        closed = fin_fwd = fin_bwd = False
                        continue
                    if k >= n_ev:
                        break
                    j = evs[k]
                    k += 1
                    if j != last_run and (idle_gap[j] or (closed and fresh_syn[j])):
                        last_run = j
                        start, init_lo, deadline = new_run(j, s1)
                        closed = fin_fwd = fin_bwd = False
                    if tcp_close:
                        f = int(flags_s[j])
                        if f & TCP_RST:
                            closed = True
                        if f & TCP_FIN:
                            if bool(from_lo_s[j]) == init_lo:
                                fin_fwd = True
                            else:
                                fin_bwd = True
                            if (fin_fwd and fin_bwd) or not bidir:
                                closed = True
            seg_closed[s_idx], seg_fin_fwd[s_idx], seg_fin_bwd[s_idx] = closed, fin_fwd, fin_bwd
            seg_last_start[s_idx] = last_run

        # ---- step 3: runs -> table rows
        starts = np.flatnonzero(run_start)
        n_runs = len(starts)
        run_id = np.cumsum(run_start) - 1
        ends = np.append(starts[1:], m)
        cnt = ends - starts
        init_lo_runs = run_init[starts]
        seg_first_run = run_id[seg_starts]
        seg_last_run = run_id[seg_last_start]
        rows = np.full(n_runs, -1, dtype=np.int64)
        rows[seg_first_run] = seg_rows
        fresh = np.flatnonzero(rows < 0)
        rows[fresh] = t.allocate(len(fresh))
        # initialise new rows from their first packet
        fr, fa = rows[fresh], orig[starts[fresh]]
        t.ipv[fr] = batch.ip_version[fa]
        t.proto[fr] = batch.protocol[fa]
        t.src[fr] = batch.src_addr[fa]
        t.dst[fr] = batch.dst_addr[fa]
        t.sport[fr] = batch.src_port[fa]
        t.dport[fr] = batch.dst_port[fa]
        t.init_lo[fr] = init_lo_runs[fresh]
        t.start[fr] = ts_s[starts[fresh]]
        t.tmax[fr] = ts_s[starts[fresh]]
        t.order[fr[np.argsort(fa, kind="stable")]] = self.next_order + np.arange(len(fresh))
        self.next_order += len(fresh)

        fwd = from_lo_s == init_lo_runs[run_id]
        direction = np.where(fwd, 1, -1).astype(np.int8)
        kept_rows, arrays = rows, (ts_s, length_s, pay_s, flags_s, tcp_s, fwd, direction, orig)
        kstarts, kends, kcnt, krun_id = starts, ends, cnt, run_id
        if opts.max_packets:
            # the first max_packets packets of each flow: a prefix of each run, none once a flow is full
            quota = np.minimum(cnt, np.clip(opts.max_packets - t.n[rows], 0, None))
            over = int((cnt - quota).sum())
            if over:
                self.accounting.skip("over_packet_cap", over)
                kept = np.flatnonzero(np.arange(m) - starts[run_id] < quota[run_id])
                arrays = tuple(x[kept] for x in arrays)
                live = quota > 0
                kept_rows, kcnt = rows[live], quota[live]
                kstarts = np.cumsum(kcnt) - kcnt
                kends = kstarts + kcnt
                krun_id = np.repeat(np.arange(len(kcnt)), kcnt)
        if len(kept_rows):
            self._accumulate(batch, kept_rows, kstarts, kends, kcnt, krun_id, *arrays)
        # every packet keeps its flow alive (idle timeout), whether the packet cap kept it or not
        t.last[rows] = ts_s[ends - 1]

        # ---- runs that ended inside the block; the last run of each segment stays active
        ended = np.ones(n_runs, dtype=bool)
        ended[seg_last_run] = False
        self.ready.extend(rows[ended].tolist())
        last_rows = rows[seg_last_run]
        t.closed[last_rows] = seg_closed
        t.fin_fwd[last_rows] = seg_fin_fwd
        t.fin_bwd[last_rows] = seg_fin_bwd
        t.key[last_rows] = ukeys
        active.update(zip(seg_keys, last_rows.tolist()))

    # ------------------------------------------------------------------ per-run aggregates of kept packets
    def _accumulate(
        self,
        batch: PacketBatch,
        rows,
        starts,
        ends,
        cnt,
        run_id,
        ts_s,
        length_s,
        pay_s,
        flags_s,
        tcp_s,
        fwd,
        direction,
        orig,
    ) -> None:
        """Merge the packets of each run into its table row (statistics, ``tmax``, slots).

        Args:
            batch: the block (for the slot bytes).
            rows: table row of each run (one run = the consecutive kept packets of one flow in this block).
            starts / ends / cnt: first position, end position and packet count of each run in the arrays below.
            run_id: run index of each packet.
            ts_s / length_s / pay_s / flags_s / tcp_s: timestamp, IP length, payload length, TCP flags and is-TCP
                of each packet, grouped by run, capture order inside a run.
            fwd / direction: packet sent by the flow's initiator (bool) and its direction (+1 / -1).
            orig: index of each packet in ``batch``.
        """
        opts = self.options
        t = self.table
        m = len(ts_s)
        n_runs = len(rows)
        iat = np.zeros(m)
        iat[1:] = np.maximum(ts_s[1:] - ts_s[:-1], 0.0)
        iat[starts] = 0.0
        first_ts = ts_s[starts]
        has_prev = t.n[rows] > 0
        gap = np.where(has_prev, np.maximum(first_ts - t.last[rows], 0.0), 0.0)
        iat_min_in = iat.copy()
        iat_min_in[starts] = np.inf
        change = np.zeros(m, dtype=np.int64)
        change[1:] = direction[1:] != direction[:-1]
        change[starts] = 0

        # ---- merge aggregates
        add = np.add.reduceat
        t.iat_sum[rows] += gap + add(iat, starts)
        t.iat_sumsq[rows] += gap * gap + add(iat * iat, starts)
        t.iat_min[rows] = np.minimum(
            np.minimum(t.iat_min[rows], np.where(has_prev, gap, np.inf)), np.minimum.reduceat(iat_min_in, starts)
        )
        t.iat_max[rows] = np.maximum(np.maximum(t.iat_max[rows], gap), np.maximum.reduceat(iat, starts))
        t.dir_changes[rows] += (has_prev & (direction[starts] != t.last_dir[rows])) + add(change, starts)
        t.n[rows] += cnt
        t.bytes[rows] += add(length_s, starts)
        t.sumsq[rows] += add(length_s * length_s, starts)
        t.lmin[rows] = np.minimum(t.lmin[rows], np.minimum.reduceat(length_s, starts))
        t.lmax[rows] = np.maximum(t.lmax[rows], np.maximum.reduceat(length_s, starts))
        fwd_i = fwd.astype(np.int64)
        r_fwd_n = add(fwd_i, starts)
        t.fwd_n[rows] += r_fwd_n
        t.fwd_bytes[rows] += add(length_s * fwd_i, starts)
        t.bwd_max[rows] = np.maximum(t.bwd_max[rows], np.maximum.reduceat(length_s * (1 - fwd_i), starts))
        t.pay_sum[rows] += add(pay_s, starts)
        t.pay_max[rows] = np.maximum(t.pay_max[rows], np.maximum.reduceat(pay_s, starts))
        t.zero_pay[rows] += add((pay_s == 0).astype(np.int64), starts)
        tcp_i = tcp_s.astype(np.int64)
        t.syn[rows] += add(((flags_s & TCP_SYN) != 0) * tcp_i, starts)
        t.fin[rows] += add(((flags_s & TCP_FIN) != 0) * tcp_i, starts)
        t.rst[rows] += add(((flags_s & TCP_RST) != 0) * tcp_i, starts)
        t.psh[rows] += add(((flags_s & TCP_PSH) != 0) * tcp_i, starts)
        # forward inter-arrival times: consecutive forward packets of the same run (+ the link to earlier blocks)
        fwd_pos = np.flatnonzero(fwd)
        if len(fwd_pos):
            fr_run = run_id[fwd_pos]
            same = fr_run[1:] == fr_run[:-1]
            gaps = np.maximum(ts_s[fwd_pos[1:]] - ts_s[fwd_pos[:-1]], 0.0)
            r_fwd_iat = np.bincount(fr_run[1:][same], weights=gaps[same], minlength=n_runs)
            firsts = np.ones(len(fwd_pos), dtype=bool)
            firsts[1:] = ~same
            lasts = np.ones(len(fwd_pos), dtype=bool)
            lasts[:-1] = ~same
            first_fwd = np.full(n_runs, np.nan)
            first_fwd[fr_run[firsts]] = ts_s[fwd_pos[firsts]]
            prev_fwd = t.last_fwd[rows]
            link = ~np.isnan(prev_fwd) & ~np.isnan(first_fwd)
            t.fwd_iat_sum[rows] += r_fwd_iat + np.where(link, np.maximum(first_fwd - prev_fwd, 0.0), 0.0)
            lrows = rows[fr_run[lasts]]
            t.last_fwd[lrows] = ts_s[fwd_pos[lasts]]
        t.tmax[rows] = np.maximum(t.tmax[rows], np.maximum.reduceat(ts_s, starts))
        t.last_dir[rows] = direction[ends - 1]

        # ---- step 4: slots of the first packets of each flow
        nslots = t.nslots[rows]
        need = np.clip(np.minimum(opts.num_packets - nslots, cnt), 0, None)
        if need.sum():
            run_rep = np.repeat(np.arange(n_runs), need)
            within = np.arange(len(run_rep)) - np.repeat(np.cumsum(need) - need, need)
            pos = starts[run_rep] + within
            srow = rows[run_rep]
            sidx = nslots[run_rep] + within
            t.lens[srow, sidx] = length_s[pos]
            t.iats[srow, sidx] = np.where(within == 0, gap[run_rep], iat[pos])
            t.dirs[srow, sidx] = direction[pos]
            pool_rows = t.allocate_slots(len(pos))
            t.slot_index[srow, sidx] = pool_rows
            t.slot_pool[pool_rows] = self._slots(batch, orig[pos], srow, direction[pos])
            t.nslots[rows] += need.astype(np.int16)

    # ------------------------------------------------------------------ slot bytes
    def _slots(self, batch: PacketBatch, idx: np.ndarray, rows: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """[P, slot_bytes] slots for batch packets ``idx`` (capture order inside each flow row)."""
        opts = self.options
        hb, pb = opts.header_bytes, opts.payload_bytes
        P = len(idx)
        if opts.anonymize == "netmamba":
            out = np.zeros((P, hb + pb), dtype=np.uint8)
            for i, (b, d) in enumerate(zip(idx.tolist(), direction.tolist())):
                out[i] = np.frombuffer(packet_slot(batch, b, d, opts, None), dtype=np.uint8)
            return out
        data = batch.data
        l3 = batch.l3[idx]
        frame_end = batch.frame_end[idx]
        pstart = batch.payload_start[idx]
        hlen = np.minimum(np.minimum(pstart, frame_end) - l3, hb)
        plen = np.clip(np.minimum(np.minimum(batch.ip_end[idx], frame_end), pstart + pb) - pstart, 0, None)
        head = _windows(data, l3, hb)
        head[np.arange(hb)[None, :] >= hlen[:, None]] = 0
        pay = _windows(data, pstart, pb)
        pay[np.arange(pb)[None, :] >= plen[:, None]] = 0
        if opts.anonymize in ("default", "strict"):
            self._anonymise(batch, idx, rows, direction, head, hlen)
            if opts.anonymize == "strict":
                for i in np.flatnonzero(plen > 0).tolist():
                    buf = bytearray(pay[i, : plen[i]].tobytes())
                    mask_cleartext_names(buf, int(batch.protocol[idx[i]]))
                    pay[i, : plen[i]] = np.frombuffer(bytes(buf), dtype=np.uint8)
        return np.concatenate([head, pay], axis=1)

    def _anonymise(self, batch, idx, rows, direction, head, hlen) -> None:
        hb = head.shape[1]
        cols = np.arange(hb)[None, :]
        v4 = (batch.ip_version[idx] == 4)[:, None]
        l4 = (batch.l4[idx] - batch.l3[idx])[:, None]
        tcp = (batch.protocol[idx] == 6)[:, None]
        v4_fields = (cols == 4) | (cols == 5) | (cols == 10) | (cols == 11) | ((cols >= 12) & (cols < 20))
        v6_fields = (cols == 2) | (cols == 3) | ((cols >= 8) & (cols < 40))
        zero = np.where(v4, v4_fields, v6_fields)
        zero |= (cols >= l4) & (cols < l4 + 4)
        zero |= np.where(tcp, (cols == l4 + 16) | (cols == l4 + 17), (cols == l4 + 6) | (cols == l4 + 7))
        v6_rows = np.flatnonzero(~v4[:, 0])
        head[v6_rows, 1] &= 0xF0
        head[zero] = 0
        # TCP sequence / acknowledgement relative to the flow's first value per direction (slots only)
        tcp_rows = np.flatnonzero(tcp[:, 0])
        if not len(tcp_rows):
            return
        l4t = l4[tcp_rows, 0]
        full = l4t + 12 <= hlen[tcp_rows]
        short = tcp_rows[~full]
        for b in range(4, 12):
            c = l4[short, 0] + b
            inside = c < hb
            head[short[inside], c[inside]] = 0
        tr = tcp_rows[full]
        if not len(tr):
            return
        t = self.table
        bi = idx[tr]
        seq = batch.seq[bi]
        ack = batch.ack[bi]
        has_ack = (batch.tcp_flags[bi] & TCP_ACK) != 0
        drow = rows[tr]
        dcol = (direction[tr] != 1).astype(np.int64)
        group = drow * 2 + dcol  # slots are in capture order inside each row
        # first slot per (row, direction) in this block
        g_sorted = np.argsort(group, kind="stable")
        gs = group[g_sorted]
        first = np.ones(len(gs), dtype=bool)
        first[1:] = gs[1:] != gs[:-1]
        base_unset = t.seq_base[drow, dcol] < 0
        fi = g_sorted[first]
        set_now = fi[base_unset[fi]]
        t.seq_base[drow[set_now], dcol[set_now]] = seq[set_now]
        rel_seq = (seq - t.seq_base[drow, dcol]) & 0xFFFFFFFF
        # acknowledgement base: first slot with the ACK flag per (row, direction)
        ack_i = np.flatnonzero(has_ack)
        if len(ack_i):
            ga = group[ack_i]
            a_sorted = np.argsort(ga, kind="stable")
            gas = ga[a_sorted]
            afirst = np.ones(len(gas), dtype=bool)
            afirst[1:] = gas[1:] != gas[:-1]
            ai = ack_i[a_sorted[afirst]]
            aset = ai[t.ack_base[drow[ai], dcol[ai]] < 0]
            t.ack_base[drow[aset], dcol[aset]] = ack[aset]
        rel_ack = np.where(has_ack, (ack - t.ack_base[drow, dcol]) & 0xFFFFFFFF, 0)
        _put_be32(head, tr, l4[tr, 0] + 4, rel_seq)
        _put_be32(head, tr, l4[tr, 0] + 8, rel_ack)
