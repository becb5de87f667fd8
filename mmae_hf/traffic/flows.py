"""Flow assembly: packets -> bidirectional (or unidirectional) flows with the MMAE byte layout and statistics.

Flow rules (identical in both engines below):
- Key: (IP version, protocol, endpoint A, endpoint B) with endpoint = (address, port). Bidirectional mode orders the two
  endpoints canonically; the initiator is the sender of the flow's first packet (capture order).
- Capture clock: the largest timestamp read so far (timestamps need not be monotonic). A packet more than
  ``idle_timeout`` before the clock (time going backwards: merged captures, a clock step) ends every open flow and
  restarts the clock at its own time (``PacketAccounting.time_jumps_back``); otherwise every later packet would be
  past the idle timeout of its flow and start a flow of its own.
- A flow ends when the clock passes its last packet's time by more than ``idle_timeout`` or its first packet's time by
  more than ``active_timeout``; when a TCP flow is closed (see ``FlowOptions.tcp_close``) and a fresh SYN arrives; when
  the clock restarts; or at the end of the capture. Flows are emitted when they end; idle flows are expired at regular
  points, so memory holds only flows that are still active (or closed less than ``idle_timeout`` ago).
- Steps: the usable packets of a read block are taken ``STEP_PACKETS`` (8192) at a time, counted from the block's
  start and again from each clock restart. After every full step and at the end of the block, idle flows are
  expired, the open-flow cap is applied and the ended flows are emitted (in order of their first packet).
- Open-flow cap: when more than ``max_open_flows`` flows are open at the end of a step, those whose last packet is
  oldest (ties: first packet order) are ended (``PacketAccounting.flows_evicted_by_cap``), so memory stays bounded
  (cap + one step) whatever the capture holds (a port scan opens one flow per packet).
- Packet order inside a flow is capture order; inter-arrival times are clipped at 0.
- ``max_packets`` (when > 0): packets after the first ``max_packets`` of a flow are dropped (``over_packet_cap``)
  but still count for the flow's boundaries (idle timeout, TCP close), so they never start a new flow; the record
  describes the kept packets only.

Two engines produce identical flows: ``ReferenceAssembler`` walks packet by packet (simple, the specification), and
``FastAssembler`` (``fastflows.py``) works on whole blocks with numpy.
"""

import heapq
import math
import os
import socket
from collections.abc import Iterator

import numpy as np

from .anonymize import SequenceBase, build_slot, slots_to_array
from .core import NUM_FLOW_STATS, SKIP_REASONS, FlowOptions, FlowRecord, PacketAccounting
from .dissect import OK, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, PacketBatch, dissect
from .netmamba import netmamba_slot
from .pcapio import CaptureReader


def format_address(addr: bytes, ip_version: int) -> str:
    if ip_version == 4:
        return socket.inet_ntop(socket.AF_INET, addr[:4])
    return socket.inet_ntop(socket.AF_INET6, addr[:16])


def packet_slot(batch: PacketBatch, i: int, direction: int, options: FlowOptions, seq_base) -> bytes:
    """The [header | payload] bytes of packet ``i`` of a batch under the configured profile."""
    l3 = int(batch.l3[i])
    pkt = batch.data[l3 : int(batch.frame_end[i])].tobytes()
    if options.anonymize == "netmamba":
        if batch.ip_version[i] != 4:
            return bytes(options.slot_bytes)
        return netmamba_slot(pkt, True, options.header_bytes, options.payload_bytes)
    return build_slot(
        pkt,
        int(batch.ip_version[i]),
        int(batch.l4[i]) - l3,
        int(batch.payload_start[i]) - l3,
        int(batch.ip_end[i]) - l3,
        int(batch.protocol[i]),
        int(batch.tcp_flags[i]),
        direction,
        options.anonymize,
        options.header_bytes,
        options.payload_bytes,
        seq_base,
    )


class FlowState:
    """Accumulators of one active flow: O(1) memory besides the first ``num_packets`` slots."""

    __slots__ = (
        "key", "ip_version", "protocol", "src", "dst", "sport", "dport", "init_lo", "order",
        "start", "last", "tmax", "n", "bytes", "sumsq", "lmin", "lmax", "fwd_n", "fwd_bytes", "bwd_max",
        "iat_sum", "iat_sumsq", "iat_min", "iat_max", "fwd_iat_sum", "last_fwd", "pay_sum", "pay_max", "zero_pay",
        "syn", "fin", "rst", "psh", "dir_changes", "last_dir", "fin_fwd", "fin_bwd", "closed",
        "slots", "lens", "iats", "dirs", "seq_base",
    )  # fmt: skip

    def __init__(self, key, ip_version, protocol, src, dst, sport, dport, init_lo, ts, order):
        self.key = key
        self.ip_version = ip_version
        self.protocol = protocol
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.init_lo = init_lo
        self.order = order
        self.start = self.last = self.tmax = ts
        self.n = self.bytes = self.sumsq = 0
        self.lmin, self.lmax = math.inf, 0
        self.fwd_n = self.fwd_bytes = self.bwd_max = 0
        self.iat_sum = self.iat_sumsq = 0.0
        self.iat_min, self.iat_max = math.inf, 0.0
        self.fwd_iat_sum = 0.0
        self.last_fwd = None
        self.pay_sum = self.pay_max = self.zero_pay = 0
        self.syn = self.fin = self.rst = self.psh = 0
        self.dir_changes = 0
        self.last_dir = 0
        self.fin_fwd = self.fin_bwd = self.closed = False
        self.slots, self.lens, self.iats, self.dirs = [], [], [], []
        self.seq_base = SequenceBase()

    def stats(self) -> np.ndarray:
        n = self.n
        s = np.zeros(NUM_FLOW_STATS, dtype=np.float64)
        mean = self.bytes / n
        bwd_n = n - self.fwd_n
        duration = self.tmax - self.start
        n_iat = n - 1
        s[0] = n
        s[1] = self.bytes
        s[2] = mean
        s[3] = math.sqrt(max(self.sumsq / n - mean * mean, 0.0))
        s[4] = self.lmin
        s[5] = self.lmax
        s[6] = self.fwd_bytes / self.fwd_n if self.fwd_n else 0.0
        s[7] = (self.bytes - self.fwd_bytes) / bwd_n if bwd_n else 0.0
        s[8] = self.bwd_max
        s[9] = duration
        if n_iat:
            iat_mean = self.iat_sum / n_iat
            s[10] = iat_mean
            s[11] = math.sqrt(max(self.iat_sumsq / n_iat - iat_mean * iat_mean, 0.0))
            s[12] = self.iat_min
            s[13] = self.iat_max
        s[14] = self.fwd_iat_sum / (self.fwd_n - 1) if self.fwd_n > 1 else 0.0
        s[15] = self.pay_sum / n
        s[16] = self.pay_max
        s[17] = self.zero_pay / n
        if duration > 0:
            s[18] = n / duration
            s[19] = self.bytes / duration
        s[20], s[21], s[22], s[23] = self.syn, self.fin, self.rst, self.psh
        s[24] = self.fwd_n / n
        s[25] = self.fwd_bytes / self.bytes if self.bytes else 0.0
        s[26] = self.dir_changes
        return s.astype(np.float32)

    def to_record(self, options: FlowOptions, source_file: str) -> FlowRecord:
        k = options.num_packets
        lens = np.zeros(k, dtype=np.int32)
        iats = np.zeros(k, dtype=np.float32)
        dirs = np.zeros(k, dtype=np.int8)
        lens[: len(self.lens)] = self.lens
        iats[: len(self.iats)] = self.iats
        dirs[: len(self.dirs)] = self.dirs
        return FlowRecord(
            input_bytes=slots_to_array(self.slots, k, options.slot_bytes),
            packet_lengths=lens,
            packet_iats=iats,
            packet_directions=dirs,
            flow_stats=self.stats(),
            src_ip=format_address(self.src, self.ip_version),
            dst_ip=format_address(self.dst, self.ip_version),
            src_port=int(self.sport),
            dst_port=int(self.dport),
            protocol=int(self.protocol),
            start_time=float(self.start),
            end_time=float(self.tmax),
            packet_count=int(self.n),
            byte_count=int(self.bytes),
            source_file=source_file,
        )


# Usable packets per assembly step: the open-flow cap and the emission of ended flows happen after each step, so
# memory holds at most max_open_flows + STEP_PACKETS flows. Both engines use it; results depend on it only through
# the cap (which flows are open when it is applied).
STEP_PACKETS = 8192


class _AssemblerBase:
    def __init__(self, options: FlowOptions, accounting: PacketAccounting, source_file: str):
        self.options = options
        self.accounting = accounting
        self.source_file = source_file
        self.active: dict = {}
        self.clock = -math.inf
        self.ready: list[FlowState] = []
        self.next_order = 0

    def _count_skips(self, batch: PacketBatch) -> None:
        counts = np.bincount(batch.reason, minlength=len(SKIP_REASONS) + 1)
        for code, count in enumerate(counts[1:], start=1):
            self.accounting.skip(SKIP_REASONS[code - 1], int(count))

    def _emit(self, st: FlowState) -> None:
        self.ready.append(st)

    def expire(self) -> None:
        """Move flows the clock has left behind to ``ready``."""
        idle, active, clock = self.options.idle_timeout, self.options.active_timeout, self.clock
        dead = [k for k, st in self.active.items() if clock - st.last > idle or clock - st.start > active]
        for k in dead:
            self._emit(self.active.pop(k))

    def drain(self) -> Iterator[FlowRecord]:
        """Yield the ended flows (in order of their first packet) as records."""
        if not self.ready:
            return
        ready = sorted(self.ready, key=lambda st: st.order)
        self.ready = []
        for st in ready:
            if st.n < self.options.min_packets:
                self.accounting.skip("short_flow", st.n)
                continue
            self.accounting.packets_in_flows += st.n
            self.accounting.flows += 1
            yield st.to_record(self.options, self.source_file)

    def evict_over_cap(self) -> None:
        """End the flows over ``max_open_flows`` whose last packet is oldest (ties: first packet order)."""
        cap = self.options.max_open_flows
        excess = len(self.active) - cap
        if not cap or excess <= 0:
            return
        for key, _ in heapq.nsmallest(excess, self.active.items(), key=lambda item: (item[1].last, item[1].order)):
            self._emit(self.active.pop(key))
        self.accounting.flows_evicted_by_cap += excess

    def restart_clock(self) -> None:
        """Time went backwards by more than the idle timeout: end every open flow and start the clock afresh."""
        self.finish()
        self.clock = -math.inf
        self.accounting.time_jumps_back += 1
        self.step_packets = 0  # steps count again from here

    def finish(self) -> None:
        for st in self.active.values():
            self._emit(st)
        self.active = {}


class ReferenceAssembler(_AssemblerBase):
    """Packet-by-packet assembler: the readable specification of the flow rules (and the benchmark's baseline)."""

    SWEEP_EVERY = 4096

    def feed(self, batch: PacketBatch) -> None:
        """Assemble a block of packets (without the end-of-step work `iter_flows` does between steps)."""
        for _ in self.feed_steps(batch):
            pass

    def feed_steps(self, batch: PacketBatch) -> Iterator[None]:
        """Assemble a block, pausing (yielding) after every ``STEP_PACKETS`` usable packets (see the module doc)."""
        self.step_packets = 0
        self._count_skips(batch)
        idx = np.flatnonzero(batch.reason == OK)
        # plain Python values once per block (numpy scalar access per packet is slow)
        cols = [
            getattr(batch, name)[idx].tolist()
            for name in ("timestamp", "ip_version", "protocol", "src_port", "dst_port", "tcp_flags", "ip_length",
                         "payload_length", "seq", "ack")
        ]  # fmt: skip
        src, dst = batch.src_addr[idx].tobytes(), batch.dst_addr[idx].tobytes()
        for j, (i, ts, ipv, proto, sport, dport, flags, length, paylen, seq, ack) in enumerate(
            zip(idx.tolist(), *cols)
        ):
            a = 16 * j
            self.add_packet(batch, i, ts, ipv, proto, src[a : a + 16], sport, dst[a : a + 16], dport, flags, length,
                            paylen, seq, ack)  # fmt: skip
            self.step_packets += 1
            if self.step_packets == STEP_PACKETS:
                self.step_packets = 0
                yield

    def add_packet(self, batch, i, ts, ipv, proto, src, sport, dst, dport, flags, length, paylen, seq, ack,
                   slot_fn=None) -> None:  # fmt: skip
        opts = self.options
        if ts < self.clock - opts.idle_timeout:
            self.restart_clock()
        self.clock = max(self.clock, ts)
        a, b = (src, sport), (dst, dport)
        if opts.bidirectional and b < a:
            key = (ipv, proto, b, a)
            from_lo = False
        else:
            key = (ipv, proto, a, b)
            from_lo = True
        st = self.active.get(key)
        if st is not None:
            fresh_syn = proto == 6 and (flags & (TCP_SYN | TCP_ACK)) == TCP_SYN
            if (
                self.clock - st.last > opts.idle_timeout
                or self.clock - st.start > opts.active_timeout
                or (st.closed and fresh_syn)
            ):
                self._emit(self.active.pop(key))
                st = None
        if st is None:
            st = FlowState(key, ipv, proto, src, dst, sport, dport, from_lo, ts, self.next_order)
            self.next_order += 1
            self.active[key] = st
        direction = 1 if from_lo == st.init_lo else -1
        if opts.max_packets and st.n >= opts.max_packets:
            # over the cap: dropped, but still this flow's packet (it keeps the flow alive and may close it)
            self.accounting.skip("over_packet_cap")
            if proto == 6:
                self._tcp_close(st, flags, direction)
            st.last = ts
            if self.next_order % self.SWEEP_EVERY == 0:
                self.expire()
            return
        # ---- accumulate
        if st.n:
            iat = max(ts - st.last, 0.0)
            st.iat_sum += iat
            st.iat_sumsq += iat * iat
            st.iat_min = min(st.iat_min, iat)
            st.iat_max = max(st.iat_max, iat)
            if direction != st.last_dir:
                st.dir_changes += 1
        else:
            iat = 0.0
        st.n += 1
        st.bytes += length
        st.sumsq += length * length
        st.lmin = min(st.lmin, length)
        st.lmax = max(st.lmax, length)
        if direction == 1:
            st.fwd_n += 1
            st.fwd_bytes += length
            if st.last_fwd is not None:
                st.fwd_iat_sum += max(ts - st.last_fwd, 0.0)
            st.last_fwd = ts
        else:
            st.bwd_max = max(st.bwd_max, length)
        st.pay_sum += paylen
        st.pay_max = max(st.pay_max, paylen)
        st.zero_pay += paylen == 0
        if proto == 6:
            st.syn += bool(flags & TCP_SYN)
            st.fin += bool(flags & TCP_FIN)
            st.rst += bool(flags & TCP_RST)
            st.psh += bool(flags & TCP_PSH)
            self._tcp_close(st, flags, direction)
        st.last = ts
        st.tmax = max(st.tmax, ts)
        st.last_dir = direction
        if len(st.slots) < opts.num_packets:
            if slot_fn is None:
                st.slots.append(packet_slot(batch, i, direction, opts, st.seq_base))
            else:
                st.slots.append(slot_fn(direction, st.seq_base))
            st.lens.append(length)
            st.iats.append(iat)
            st.dirs.append(direction)
        if self.next_order % self.SWEEP_EVERY == 0:
            self.expire()

    def _tcp_close(self, st: FlowState, flags: int, direction: int) -> None:
        """The ``tcp_close`` rule for one TCP packet of ``st`` (RST, or FIN from both sides / unidirectional FIN)."""
        opts = self.options
        if not opts.tcp_close:
            return
        if flags & TCP_RST:
            st.closed = True
        if flags & TCP_FIN:
            if direction == 1:
                st.fin_fwd = True
            else:
                st.fin_bwd = True
            if st.fin_bwd and st.fin_fwd or not opts.bidirectional:
                st.closed = True


# Below this capture size the reference engine is faster: numpy's fixed cost per block dominates tiny captures.
AUTO_FAST_MIN_BYTES = 64 << 10


def _capture_size(source) -> int | None:
    if isinstance(source, (str, os.PathLike)):
        try:
            return os.path.getsize(source)
        except OSError:
            return None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    return None


def _engine(options: FlowOptions, accounting: PacketAccounting, source_file: str, engine: str, source=None):
    if engine not in ("auto", "fast", "reference"):
        raise ValueError(f"engine={engine!r} is not one of 'auto', 'fast', 'reference'")
    if engine == "auto":
        size = _capture_size(source)
        engine = "reference" if size is not None and size < AUTO_FAST_MIN_BYTES else "fast"
    if engine == "reference":
        return ReferenceAssembler(options, accounting, source_file)
    from .fastflows import FastAssembler

    return FastAssembler(options, accounting, source_file)


def iter_flows(
    source,
    options: FlowOptions | None = None,
    *,
    accounting: PacketAccounting | None = None,
    strict: bool = False,
    source_name: str | None = None,
    engine: str = "auto",
) -> Iterator[FlowRecord]:
    """Stream the flows of one capture (pcap or pcapng; path, bytes or binary file object).

    Flows are yielded as they end (ordered by first packet within each emission point); memory is bounded by the
    number of open flows, at most ``options.max_open_flows`` (plus the new flows of one read block). Every packet read is counted in ``accounting`` (``packets_in_flows`` or ``skipped``).
    A damaged file raises ``PcapFormatError`` when ``strict``; otherwise the message (file, byte offset) goes to
    ``accounting.errors`` and the flows read before the damage are still yielded.

    Args:
        engine: ``"fast"`` (block-wise numpy), ``"reference"`` (packet by packet) or ``"auto"`` (reference for
            captures under 64 KiB, where numpy's fixed costs dominate, fast otherwise); all give identical flows.
    """
    options = options or FlowOptions()
    accounting = accounting if accounting is not None else PacketAccounting()
    if source_name is None:
        if isinstance(source, (str, os.PathLike)):
            source_name = os.fspath(source)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            source_name = "<bytes>"
        else:
            source_name = str(getattr(source, "name", "<stream>"))
    reader = CaptureReader(source, source_name=source_name, strict=strict)
    asm = _engine(options, accounting, source_name, engine, source)
    try:
        for chunk in reader:
            accounting.packets_read += len(chunk)
            for _ in asm.feed_steps(dissect(chunk, options.drop_service_chatter)):
                asm.expire()
                asm.evict_over_cap()
                yield from asm.drain()
            asm.expire()
            asm.evict_over_cap()
            yield from asm.drain()
    finally:
        accounting.errors.extend(reader.errors)
    asm.finish()
    yield from asm.drain()
