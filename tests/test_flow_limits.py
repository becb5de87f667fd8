"""Hostile captures: a scan against the open-flow cap, time going backwards, odd pcapng resolutions, FIFOs."""

import contextlib
import os
import signal
import struct
import tracemalloc

import numpy as np
import pytest
from traffic_pcaps import _block, ether, handshake, pcap_bytes, raw_tcp, udp

from mmae_hf.traffic import FlowOptions, PacketAccounting, PcapFormatError, iter_flows
from mmae_hf.traffic.pcapio import CaptureReader

ENGINES = ("reference", "fast")


def scan(n_flows, t0=0.0, spacing=1e-4):
    """One SYN per flow from one host to ``n_flows`` distinct (address, port) pairs (a port scan)."""
    recs = []
    for i in range(n_flows):
        host, port = divmod(i, 1000)
        recs.append(
            (
                t0 + i * spacing,
                ether(
                    raw_tcp("10.0.0.1", f"172.16.{host // 250}.{host % 250 + 1}", 40000, 1 + port, flags=0x02, seq=i)
                ),
            )
        )
    return pcap_bytes(recs)


def read(data, engine, **opts):
    acc = PacketAccounting()
    flows = list(iter_flows(data, FlowOptions(**opts), accounting=acc, engine=engine))
    assert acc.packets_read == acc.packets_in_flows + acc.packets_skipped
    return flows, acc


def same_flows(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x.input_bytes, y.input_bytes) and np.array_equal(x.packet_lengths, y.packet_lengths)
        assert np.array_equal(x.packet_directions, y.packet_directions)
        assert np.allclose(x.packet_iats, y.packet_iats) and np.allclose(x.flow_stats, y.flow_stats, rtol=1e-5)
        assert (x.src_ip, x.src_port, x.dst_ip, x.dst_port, x.start_time, x.end_time, x.packet_count) == (
            y.src_ip,
            y.src_port,
            y.dst_ip,
            y.dst_port,
            y.start_time,
            y.end_time,
            y.packet_count,
        )


# ---------------------------------------------------------------- the open-flow cap
def test_scan_memory_stays_under_the_open_flow_cap(monkeypatch):
    """20k one-packet flows, all within the idle timeout: without a cap every one stays open to the end."""
    import mmae_hf.traffic.pcapio as pcapio

    monkeypatch.setattr(pcapio, "BLOCK_SIZE", 64 << 10)  # the cap is applied after every read block
    data = scan(20_000)
    tracemalloc.start()
    try:
        acc = PacketAccounting()
        flows = sum(1 for _ in iter_flows(data, FlowOptions(max_open_flows=1000), accounting=acc, engine="fast"))
        _, capped_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        uncapped = sum(1 for _ in iter_flows(data, FlowOptions(max_open_flows=0), engine="fast"))
        _, uncapped_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert flows == uncapped == 20_000  # one-packet flows: ending them early changes no record
    assert acc.flows_evicted_by_cap == 19_000 and acc.to_dict()["flows_evicted_by_cap"] == 19_000
    # under the cap: ~1000 open flows + one block's; without it the table grows to 20k flows
    assert capped_peak < 10 << 20, capped_peak
    assert uncapped_peak > 4 * capped_peak, (uncapped_peak, capped_peak)


def test_memory_per_open_flow_is_small():
    """A one-packet flow keeps one slot, not num_packets, and narrow accumulators: well under 1 KB per open flow."""
    from mmae_hf.traffic.dissect import dissect
    from mmae_hf.traffic.fastflows import FastAssembler

    asm = FastAssembler(FlowOptions(max_open_flows=0), PacketAccounting(), "scan")
    for chunk in CaptureReader(scan(8192)):
        asm.feed(dissect(chunk))
    assert len(asm.active) == 8192
    t = asm.table
    table_bytes = sum(v.nbytes for v in vars(t).values() if isinstance(v, np.ndarray))
    assert table_bytes / len(asm.active) < 900, table_bytes / len(asm.active)


@pytest.mark.parametrize("engine", ENGINES)
def test_cap_evicts_the_least_recently_active_flow(engine, monkeypatch):
    import mmae_hf.traffic.pcapio as pcapio

    # one record per block: the cap is checked after every packet
    monkeypatch.setattr(pcapio, "BLOCK_SIZE", 64)
    a = dict(src="10.0.0.1", dst="10.0.0.2", sport=1111, dport=53)
    b = dict(src="10.0.0.1", dst="10.0.0.3", sport=2222, dport=53)
    c = dict(src="10.0.0.1", dst="10.0.0.4", sport=3333, dport=53)
    pk = [(0.0, udp(**a)), (0.1, udp(**b)), (0.2, udp(**a)), (0.3, udp(**c)), (0.4, udp(**b)), (0.5, udp(**a))]
    data = pcap_bytes([(t, ether(p)) for t, p in pk])
    flows, acc = read(data, engine, max_open_flows=2)
    # c arrives: b (last seen 0.1) is the oldest and is ended; b's next packet starts a new flow, which pushes a
    # (0.2) out; a's next packet pushes c (0.3) out; the end of the capture ends the last two
    assert [(f.dst_ip, f.packet_count, round(f.start_time, 6)) for f in flows] == [
        ("10.0.0.3", 1, 0.1),
        ("10.0.0.2", 2, 0.0),
        ("10.0.0.4", 1, 0.3),
        ("10.0.0.3", 1, 0.4),
        ("10.0.0.2", 1, 0.5),
    ]
    assert acc.flows_evicted_by_cap == 3
    unlimited, acc = read(data, engine)
    assert sorted(f.packet_count for f in unlimited) == [1, 2, 3] and acc.flows_evicted_by_cap == 0


def test_engines_agree_under_the_cap(monkeypatch):
    import mmae_hf.traffic.pcapio as pcapio

    monkeypatch.setattr(pcapio, "BLOCK_SIZE", 8 << 10)
    recs = []
    for i in range(120):  # interleaved conversations, and a scan through the middle of them
        recs += handshake(client=f"10.1.{i // 200}.{i % 200 + 1}", cport=20000 + i, t0=0.003 * i)
    recs += [(0.1 + 1e-4 * i, raw_tcp("10.9.9.9", "172.16.0.1", 40000, 1 + i, flags=0x02)) for i in range(1500)]
    recs.sort(key=lambda r: r[0])
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    for opts in (dict(max_open_flows=50), dict(max_open_flows=7, bidirectional=False, idle_timeout=0.05)):
        (a, acc_a), (b, acc_b) = (read(data, engine, **opts) for engine in ENGINES)
        assert acc_a.to_dict() == acc_b.to_dict() and acc_a.flows_evicted_by_cap > 0
        same_flows(a, b)  # the same records in the same order


def test_engines_agree_when_the_cap_is_applied_between_steps_of_a_block(monkeypatch):
    """Steps of a few packets inside one block, restarted by time jumps: the cap, the emission points and the
    counters are the same in both engines (the default step is 8192 usable packets)."""
    import mmae_hf.traffic.fastflows as fastflows
    import mmae_hf.traffic.flows as flows

    monkeypatch.setattr(flows, "STEP_PACKETS", 37)
    monkeypatch.setattr(fastflows, "STEP_PACKETS", 37)
    recs = []
    for part, t0 in enumerate((900.0, 500.0, 100.0)):  # two clock restarts
        conv = []
        for i in range(25):
            conv += handshake(client=f"10.{part + 1}.0.{i + 1}", cport=20000 + i, t0=t0 + 0.01 * i)
        conv += [
            (t0 + 0.05 + 1e-4 * i, raw_tcp("10.9.9.9", "172.16.0.1", 40000, 1 + i, flags=0x02)) for i in range(120)
        ]
        recs += sorted(conv, key=lambda r: r[0])
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    for opts in (dict(max_open_flows=15), dict(max_open_flows=4, bidirectional=False), dict(max_open_flows=0)):
        (a, acc_a), (b, acc_b) = (read(data, engine, **opts) for engine in ENGINES)
        assert acc_a.to_dict() == acc_b.to_dict() and acc_a.time_jumps_back == 2
        assert (acc_a.flows_evicted_by_cap > 0) == bool(opts["max_open_flows"])
        same_flows(a, b)  # the same records in the same order
    # ended flows come out after a step, before the rest of the block is assembled
    acc = PacketAccounting()
    first = next(iter_flows(data, FlowOptions(max_open_flows=15), accounting=acc, engine="fast"))
    assert first.packet_count >= 1 and acc.packets_in_flows < len(recs) / 3


def test_max_open_flows_validation():
    assert FlowOptions().max_open_flows == 100_000
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_open_flows"):
            FlowOptions(max_open_flows=bad)
    assert FlowOptions.from_dict(FlowOptions(max_open_flows=5).to_dict()).max_open_flows == 5


# ---------------------------------------------------------------- time going backwards
def _conversations(t0, n=30, subnet=1):
    recs = []
    for i in range(n):
        recs += handshake(client=f"10.{subnet}.0.{i + 1}", cport=30000 + i, t0=t0 + 0.5 * i)
    return sorted(recs, key=lambda r: r[0])


@pytest.mark.parametrize("engine", ENGINES)
def test_merged_captures_with_the_second_earlier_give_the_flows_of_their_parts(engine):
    later = _conversations(1_000_000.0, subnet=1)
    earlier = _conversations(5_000.0, subnet=2)  # the second capture is ~11 days earlier
    merged = pcap_bytes([(t, ether(p)) for t, p in later + earlier])
    parts = [read(pcap_bytes([(t, ether(p)) for t, p in part]), engine)[0] for part in (later, earlier)]
    flows, acc = read(merged, engine)
    assert len(flows) == 60 and acc.time_jumps_back == 1  # not one flow per packet of the second part
    assert acc.to_dict()["time_jumps_back"] == 1
    same_flows(flows, parts[0] + parts[1])


def test_engines_agree_when_time_jumps_back_often(monkeypatch):
    """Several jumps inside one block, across blocks, and small reorderings that are not jumps."""
    import mmae_hf.traffic.pcapio as pcapio

    recs = []
    for part, t0 in enumerate((500.0, 100.0, 900.0, 0.0, 0.5, 300.0)):
        recs += _conversations(t0, n=8, subnet=part + 1)
    recs.append((301.0, udp(sport=9, dport=10)))
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    for block in (1 << 20, 2 << 10):
        monkeypatch.setattr(pcapio, "BLOCK_SIZE", block)
        (a, acc_a), (b, acc_b) = (read(data, engine, idle_timeout=60.0) for engine in ENGINES)
        # 500 -> 100 and 900 -> 0 are jumps; 0.5 after ~14 s is within the idle timeout; 300 is forward
        assert acc_a.time_jumps_back == acc_b.time_jumps_back == 2
        assert acc_a.to_dict() == acc_b.to_dict()
        same_flows(a, b)
        assert len(a) == 6 * 8 + 1


# ---------------------------------------------------------------- pcapng timestamp resolutions
def _pcapng_one_packet(tsresol, ticks):
    e = "<"
    option = struct.pack(e + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(e + "HH", 0, 0)
    frame = ether(udp())
    return b"".join(
        [
            _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)),
            _block(e, 1, struct.pack(e + "HHI", 1, 0, 262144) + option),
            _block(e, 6, struct.pack(e + "IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame),
        ]
    )


@pytest.mark.filterwarnings("error")  # the old code warned (overflow in a cast) and returned -0.000195
@pytest.mark.parametrize(
    "tsresol, ticks, seconds",
    [
        (30, 10**15, 1e-15),  # 10^-30 s units
        (0xFF, 2**60, 2.0**-67),  # 2^-127 s units
        (0x80 | 63, 2**63 + 2**62, 1.5),  # 2^-63 s: tick counts past 2^63 are unsigned
        (19, 3 * 10**19 // 2, 1.5),
        (9, 1_700_000_000 * 10**9 + 250_000_000, 1_700_000_000.25),
        (0, 42, 42.0),
    ],
)
def test_pcapng_timestamp_resolutions_follow_the_spec(tsresol, ticks, seconds):
    (chunk,) = list(CaptureReader(_pcapng_one_packet(tsresol, ticks)))
    assert chunk.timestamp[0] == pytest.approx(seconds, rel=1e-12)
    (flow,) = list(iter_flows(_pcapng_one_packet(tsresol, ticks)))
    assert flow.start_time == pytest.approx(seconds, rel=1e-12)


# ---------------------------------------------------------------- files that are not regular files
@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging (opening a FIFO without a writer blocks forever)."""

    def alarm(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "trap.pcap"
    os.mkfifo(fifo)
    with deadline(10), pytest.raises(PcapFormatError, match=r"trap\.pcap: not a regular file \(FIFO\), not read$"):
        list(iter_flows(fifo, strict=True))
    acc = PacketAccounting()
    with deadline(10):
        assert list(iter_flows(fifo, accounting=acc)) == []
    assert len(acc.errors) == 1 and "FIFO" in acc.errors[0]
