"""Flow rules: timeouts, TCP close, unidirectional mode, statistics, engines agree, memory bound."""

from pathlib import Path

import numpy as np
import pytest
from traffic_pcaps import ether, handshake, pcap_bytes, raw_tcp, tcp, udp

from mmae_hf.traffic import FLOW_STAT_NAMES, FlowOptions, PacketAccounting, iter_flows

ENGINES = ("reference", "fast")


def run(records, engine, **opts):
    acc = PacketAccounting()
    flows = list(iter_flows(pcap_bytes([(t, ether(p)) for t, p in records]), FlowOptions(**opts), accounting=acc,
                            engine=engine))  # fmt: skip
    assert acc.packets_read == acc.packets_in_flows + acc.packets_skipped
    return sorted(flows, key=lambda f: f.start_time), acc


def stat(flow, name):
    return float(flow.flow_stats[FLOW_STAT_NAMES.index(name)])


@pytest.mark.parametrize("engine", ENGINES)
def test_bidirectional_flow_layout_and_stats(engine):
    pk = handshake(data=(b"hello", b"world!!"))
    (f,), _ = run(pk, engine, anonymize="none")
    assert f.packet_count == 8 and f.protocol == 6
    assert f.packet_directions.tolist() == [1, -1, 1, 1, -1]
    assert f.packet_lengths.tolist() == [40, 40, 40, 45, 47]
    assert np.allclose(f.packet_iats, [0, 0.01, 0.01, 0.01, 0.01], atol=1e-6)
    # slot 3 = [IP+TCP header (40 bytes) zero-padded to 80 | payload "hello" zero-padded to 240]
    slot = f.input_bytes[3 * 320 : 4 * 320]
    assert bytes(slot[:40]) == pk[3][1][:40] and not slot[40:80].any()
    assert bytes(slot[80:85]) == b"hello" and not slot[85:].any()
    lengths = [40, 40, 40, 45, 47, 40, 40, 40]
    fwd = [1, 0, 1, 1, 0, 1, 0, 1]
    expect = {
        "packet_count": 8, "byte_count": sum(lengths), "length_mean": np.mean(lengths), "length_std": np.std(lengths),
        "length_min": 40, "length_max": 47, "fwd_length_mean": np.mean([l for l, d in zip(lengths, fwd) if d]),
        "bwd_length_mean": np.mean([l for l, d in zip(lengths, fwd) if not d]), "bwd_length_max": 47,
        "duration": 0.07, "iat_mean": 0.01, "iat_std": 0.0, "iat_min": 0.01, "iat_max": 0.01,
        "fwd_iat_mean": 0.07 / 4, "payload_mean": 12 / 8, "payload_max": 7, "zero_payload_fraction": 6 / 8,
        "packets_per_second": 8 / 0.07, "bytes_per_second": sum(lengths) / 0.07, "syn_count": 2, "fin_count": 2,
        "rst_count": 0, "psh_count": 2, "fwd_packet_fraction": 5 / 8,
        "fwd_byte_fraction": sum(l for l, d in zip(lengths, fwd) if d) / sum(lengths), "direction_changes": sum(a != b for a, b in zip(fwd, fwd[1:])),
    }  # fmt: skip
    assert set(expect) == set(FLOW_STAT_NAMES) and len(FLOW_STAT_NAMES) == 27
    for name, value in expect.items():
        assert stat(f, name) == pytest.approx(value, rel=1e-4, abs=2e-5), name


@pytest.mark.parametrize("engine", ENGINES)
def test_fin_from_both_sides_then_new_syn_starts_new_flow(engine):
    first = handshake(t0=0.0)
    second = handshake(t0=1.0)  # same 5-tuple reused after a clean close
    flows, _ = run(first + second, engine)
    assert [f.packet_count for f in flows] == [8, 8]
    # without the close rule, the reuse is one flow
    flows, _ = run(first + second, engine, tcp_close=False)
    assert [f.packet_count for f in flows] == [16]


@pytest.mark.parametrize("engine", ENGINES)
def test_rst_closes_and_late_packets_stay_with_closed_flow(engine):
    pk = handshake(close="rst")
    late = [(0.5, tcp(flags="A", seq=999))]  # not a fresh SYN: belongs to the closed flow
    again = [(t + 1.0, p) for t, p in handshake()]
    flows, _ = run(pk + late + again, engine)
    assert [f.packet_count for f in flows] == [len(pk) + 1, 8]
    assert stat(flows[0], "rst_count") == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_one_fin_does_not_close(engine):
    pk = handshake(close="none")
    fin = [(0.2, tcp(flags="FA", seq=5000))]
    again = [(t + 1.0, p) for t, p in handshake()]
    flows, _ = run(pk + fin + again, engine)
    assert [f.packet_count for f in flows] == [len(pk) + 1 + 8]


@pytest.mark.parametrize("engine", ENGINES)
def test_idle_and_active_timeouts(engine):
    pk = [(t, udp(sport=5000, dport=6000, payload=b"x")) for t in (0.0, 1.0, 2.0, 10.0, 11.0)]
    flows, _ = run(pk, engine, idle_timeout=5.0)
    assert [f.packet_count for f in flows] == [3, 2]
    assert flows[1].packet_iats[0] == 0.0
    steady = [(float(t), udp(sport=5000, dport=6000)) for t in range(25)]
    flows, _ = run(steady, engine, idle_timeout=5.0, active_timeout=10.0)
    assert [f.packet_count for f in flows] == [11, 11, 3]
    # the capture clock (largest timestamp so far) expires flows, even if their own packets stop
    # (flow 1->2's own gap is 4.9 s < 5 s, but the clock is already at 8 s when its late packet arrives)
    other = [(0.0, udp(sport=1, dport=2)), (0.5, udp(sport=3, dport=4)), (4.0, udp(sport=3, dport=4)),
             (8.0, udp(sport=3, dport=4)), (4.9, udp(sport=1, dport=2))]  # fmt: skip
    flows, _ = run(other, engine, idle_timeout=5.0)
    assert sorted(f.packet_count for f in flows) == [1, 1, 3]


@pytest.mark.parametrize("engine", ENGINES)
def test_unidirectional_mode(engine):
    flows, _ = run(handshake(), engine, bidirectional=False, tcp_close=False)
    assert sorted(f.packet_count for f in flows) == [3, 5]
    for f in flows:
        assert set(f.packet_directions[: f.packet_count].tolist()) == {1}
        assert stat(f, "fwd_packet_fraction") == 1.0 and stat(f, "direction_changes") == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_short_flows_empty_payloads_and_min_packets(engine):
    pk = [(0.0, tcp(flags="S")), (0.1, tcp(src="10.0.0.2", dst="10.0.0.1", sport=443, dport=40000, flags="SA"))]
    (f,), _ = run(pk, engine)
    assert f.packet_count == 2 and f.packet_directions.tolist() == [1, -1, 0, 0, 0]
    assert not f.input_bytes[2 * 320 :].any() and not f.input_bytes[80:320].any()
    assert f.packet_lengths.tolist() == [40, 40, 0, 0, 0] and stat(f, "zero_payload_fraction") == 1.0
    flows, acc = run(pk + [(0.2, udp())], engine, min_packets=2)
    assert len(flows) == 1 and acc.skipped == {"short_flow": 1} and acc.flows == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_out_of_order_timestamps(engine):
    pk = [(t, udp(sport=7, dport=8)) for t in (5.0, 4.0, 6.0)]
    (f,), _ = run(pk, engine)
    assert f.packet_iats.tolist()[:3] == [0.0, 0.0, pytest.approx(2.0)]
    assert f.start_time == 5.0 and f.end_time == 6.0


def _many_flows(n_flows, per_flow=6, spacing=1.0):
    recs = []
    for i in range(n_flows):
        c = dict(src=f"10.{i // 250}.{i % 250}.1", dst="192.0.2.1", sport=1024 + i % 60000, dport=443)
        s = dict(src="192.0.2.1", dst=c["src"], sport=443, dport=c["sport"])
        t0 = i * spacing
        for k in range(per_flow):
            side = c if k % 2 == 0 else s
            recs.append((t0 + 0.001 * k, raw_tcp(side["src"], side["dst"], side["sport"], side["dport"], seq=1000 + k,
                                                 ack=77, payload=bytes([k]) * (10 + k))))  # fmt: skip
    return recs


def test_engines_agree_on_many_interleaved_flows():
    recs = _many_flows(400, per_flow=9, spacing=0.003)
    recs.sort(key=lambda r: r[0])
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    for opts in (FlowOptions(), FlowOptions(bidirectional=False, idle_timeout=0.5, active_timeout=0.7),
                 FlowOptions(anonymize="strict"), FlowOptions(anonymize="netmamba", num_packets=3)):  # fmt: skip
        a = sorted(iter_flows(data, opts, engine="reference"), key=lambda f: (f.start_time, f.src_ip, f.src_port))
        b = sorted(iter_flows(data, opts, engine="fast"), key=lambda f: (f.start_time, f.src_ip, f.src_port))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert np.array_equal(x.input_bytes, y.input_bytes)
            assert np.array_equal(x.packet_lengths, y.packet_lengths)
            assert np.array_equal(x.packet_directions, y.packet_directions)
            assert np.allclose(x.packet_iats, y.packet_iats)
            assert np.allclose(x.flow_stats, y.flow_stats, rtol=1e-5, atol=1e-6)
            assert (x.src_ip, x.src_port, x.packet_count) == (y.src_ip, y.src_port, y.packet_count)


def engines_agree(files):
    for path in files:
        a = list(iter_flows(path, engine="reference"))
        b = list(iter_flows(path, engine="fast"))
        assert len(a) == len(b)
        for x, y in zip(sorted(a, key=lambda f: f.start_time), sorted(b, key=lambda f: f.start_time)):
            assert np.array_equal(x.input_bytes, y.input_bytes) and np.allclose(
                x.flow_stats, y.flow_stats, rtol=1e-5, atol=1e-6
            )


def test_engines_agree_on_the_sample_traffic():
    files = sorted((Path(__file__).resolve().parents[1] / "examples" / "sample_traffic").rglob("*.pcap"))
    assert len(files) == 48
    engines_agree(files)


@pytest.mark.shared_data
def test_engines_agree_on_real_captures(shared_dir):
    files = sorted((shared_dir / "data" / "ndpi-encrypted-services").rglob("*.pcap"))[::5]
    assert len(files) > 200
    engines_agree(files)


def test_memory_bounded_by_active_flows(monkeypatch):
    """Flows that went idle are emitted while reading; the active table does not grow with the capture."""
    from mmae_hf.traffic.fastflows import FastAssembler
    from mmae_hf.traffic.pcapio import CaptureReader
    from mmae_hf.traffic.dissect import dissect

    recs = _many_flows(3000, per_flow=4, spacing=1.0)  # one new flow per second, each lasting 3 ms
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    opts = FlowOptions(idle_timeout=10.0)
    asm = FastAssembler(opts, PacketAccounting(), "x")
    peak_active = emitted = 0
    for chunk in CaptureReader(data, block_size=32 << 10):
        asm.feed(dissect(chunk))
        asm.expire()
        emitted += sum(1 for _ in asm.drain())
        peak_active = max(peak_active, len(asm.active))
    asm.finish()
    emitted += sum(1 for _ in asm.drain())
    assert emitted == 3000
    assert peak_active < 200  # ~ idle_timeout flows + one block's worth, not 3000
    assert asm.table.capacity <= 512
    # and the flows come out while reading, not only at the end
    import mmae_hf.traffic.pcapio as pcapio

    monkeypatch.setattr(pcapio, "BLOCK_SIZE", 32 << 10)
    acc = PacketAccounting()
    gen = iter_flows(data, opts, accounting=acc, engine="fast")
    next(gen)
    assert 0 < acc.packets_read < len(recs) / 4


def test_hash_collisions_fall_back_to_exact_grouping(monkeypatch):
    import mmae_hf.traffic.fastflows as fastflows

    recs = sorted(_many_flows(50, per_flow=5, spacing=0.002), key=lambda r: r[0])
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    want = sorted(iter_flows(data, engine="reference"), key=lambda f: (f.start_time, f.src_port))
    monkeypatch.setattr(fastflows, "_key_hash", lambda keys: np.zeros(len(keys), dtype=np.uint64))  # all collide
    got = sorted(iter_flows(data, engine="fast"), key=lambda f: (f.start_time, f.src_port))
    assert len(got) == len(want) == 50
    assert all(
        np.array_equal(a.input_bytes, b.input_bytes) and a.packet_count == b.packet_count for a, b in zip(got, want)
    )


def test_engines_agree_at_the_active_timeout_edge():
    """The active timeout compares ``clock - start > active_timeout`` in both engines: ``start + active_timeout``
    rounds differently for some timestamps (1.93 + 0.15 > 2.08 in binary floating point)."""
    recs = [(1.0 + 0.01 * k, udp(sport=7000, dport=53, payload=bytes([k % 256]))) for k in range(300)]
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    opts = FlowOptions(idle_timeout=0.05, active_timeout=0.15)
    a, b = (list(iter_flows(data, opts, engine=engine)) for engine in ENGINES)
    assert [(f.start_time, f.packet_count) for f in a] == [(f.start_time, f.packet_count) for f in b]
    assert len(a) == 20 and sum(f.packet_count for f in a) == 300


def _same_record(x, y):
    assert np.array_equal(x.input_bytes, y.input_bytes)
    assert np.array_equal(x.packet_lengths, y.packet_lengths)
    assert np.array_equal(x.packet_directions, y.packet_directions)
    assert np.allclose(x.packet_iats, y.packet_iats)
    assert np.allclose(x.flow_stats, y.flow_stats, rtol=1e-5, atol=1e-6)
    assert (x.src_ip, x.src_port, x.dst_ip, x.dst_port, x.protocol) == (
        y.src_ip,
        y.src_port,
        y.dst_ip,
        y.dst_port,
        y.protocol,
    )
    assert (x.packet_count, x.byte_count, x.start_time, x.end_time) == (
        y.packet_count,
        y.byte_count,
        y.start_time,
        y.end_time,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_packet_cap_keeps_the_first_packets_and_counts_the_rest(engine):
    pk = handshake(data=(b"hello", b"world!!"))  # 8 packets: S, SA, A, PA, PA, FA, FA, A
    (f,), acc = run(pk, engine, anonymize="none", max_packets=5, num_packets=7)
    # the capped flow is the flow of the first five packets alone: statistics, end time, arrays, bytes
    (want,), _ = run(pk[:5], engine, anonymize="none", num_packets=7)
    _same_record(f, want)
    assert f.packet_count == 5 and f.byte_count == 40 * 3 + 45 + 47 and f.end_time == pytest.approx(0.04)
    assert f.packet_lengths.tolist() == [40, 40, 40, 45, 47, 0, 0] and f.packet_directions.tolist()[5:] == [0, 0]
    assert not f.input_bytes[5 * 320 :].any()
    assert stat(f, "fin_count") == 0 and stat(f, "syn_count") == 2 and stat(f, "duration") == pytest.approx(0.04)
    assert stat(f, "packets_per_second") == pytest.approx(5 / 0.04, rel=1e-4)
    assert acc.packets_read == 8 and acc.packets_in_flows == 5 and acc.flows == 1
    assert acc.skipped == {"over_packet_cap": 3}
    # a cap at or above the flow's length changes nothing
    (g,), acc = run(pk, engine, anonymize="none", max_packets=8, num_packets=7)
    (h,), _ = run(pk, engine, anonymize="none", num_packets=7)
    _same_record(g, h)
    assert acc.skipped == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_packets_over_the_cap_do_not_start_a_new_flow(engine):
    # one packet a second, idle timeout 1.5 s: only the dropped packets keep the flow alive past 2 s
    pk = [(float(t), udp(sport=5000, dport=6000)) for t in range(10)] + [(20.0, udp(sport=5000, dport=6000))]
    flows, acc = run(pk, engine, idle_timeout=1.5, max_packets=3)
    assert [f.packet_count for f in flows] == [3, 1]  # the packet after the 18 s gap starts the second flow
    assert flows[0].end_time == 2.0 and flows[1].start_time == 20.0
    assert acc.skipped == {"over_packet_cap": 7} and acc.packets_in_flows == 4
    # the dropped FINs still close a TCP flow: the reused 5-tuple's fresh SYN starts a new flow
    flows, acc = run(handshake(t0=0.0) + handshake(t0=1.0), engine, max_packets=3)
    assert [f.packet_count for f in flows] == [3, 3] and [stat(f, "fin_count") for f in flows] == [0, 0]
    assert acc.skipped == {"over_packet_cap": 10}
    # the active timeout still counts from the first packet
    steady = [(float(t), udp(sport=5000, dport=6000)) for t in range(25)]
    flows, acc = run(steady, engine, idle_timeout=5.0, active_timeout=10.0, max_packets=4)
    assert [f.packet_count for f in flows] == [4, 4, 3] and acc.skipped == {"over_packet_cap": 14}


@pytest.mark.parametrize("max_packets", [1, 2, 7])
def test_engines_agree_with_a_packet_cap_across_blocks(max_packets, monkeypatch):
    """Flows longer than the cap, interleaved, spread over many small blocks (a flow fills up in an earlier block)."""
    import mmae_hf.traffic.pcapio as pcapio

    recs = sorted(_many_flows(150, per_flow=11, spacing=0.002), key=lambda r: r[0])
    # and one long stream, 10 ms apart, that spans several blocks after it filled up in the first one
    recs += [(1.0 + 0.01 * k, udp(sport=7000, dport=53, payload=bytes([k % 256]) * (k % 40 + 1))) for k in range(300)]
    data = pcap_bytes([(t, ether(p)) for t, p in recs])
    monkeypatch.setattr(pcapio, "BLOCK_SIZE", 4 << 10)
    for opts in (
        FlowOptions(max_packets=max_packets),
        FlowOptions(max_packets=max_packets, bidirectional=False, tcp_close=False, num_packets=3),
        FlowOptions(max_packets=max_packets, idle_timeout=0.05, active_timeout=0.15, anonymize="strict"),
    ):
        got = {}
        for engine in ENGINES:
            acc = PacketAccounting()
            flows = sorted(
                iter_flows(data, opts, accounting=acc, engine=engine),
                key=lambda f: (f.start_time, f.src_ip, f.src_port),
            )
            assert acc.packets_read == len(recs) == acc.packets_in_flows + acc.packets_skipped
            assert acc.packets_in_flows == sum(f.packet_count for f in flows)
            assert all(f.packet_count <= max_packets for f in flows)
            # the dropped packets keep the 3 s stream alive from block to block: one flow, unless the active
            # timeout (150 ms) cuts it
            stream = sum(f.src_port == 7000 for f in flows)
            assert stream == (1 if opts.active_timeout > 3 else 20)
            got[engine] = flows, acc
        (a, acc_a), (b, acc_b) = got["reference"], got["fast"]
        assert len(a) == len(b) > 0 and acc_a.to_dict() == acc_b.to_dict()
        assert acc_a.skipped["over_packet_cap"] > 0
        for x, y in zip(a, b):
            _same_record(x, y)


def test_max_packets_validation_and_serialisation():
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="max_packets must be an integer >= 0"):
            FlowOptions(max_packets=bad)
    with pytest.raises(ValueError, match="max_packets=2 is below min_packets=3"):
        FlowOptions(max_packets=2, min_packets=3)
    opts = FlowOptions(max_packets=np.int64(100), bidirectional=False)
    assert opts.max_packets == 100 and type(opts.max_packets) is int
    assert FlowOptions.from_dict(opts.to_dict()) == opts
    old = FlowOptions().to_dict()
    del old["max_packets"]  # a preprocessor_config.json / build report written before the option existed
    assert FlowOptions.from_dict(old).max_packets == 0
