"""Container and link-layer coverage: pcap/pcapng flavours, link types, VLANs, IPv6 extension headers, damage."""

import struct

import numpy as np
import pytest
from traffic_pcaps import LINK, ether, handshake, pcap_bytes, pcapng_bytes, tcp, udp

from mmae_hf.traffic import FlowOptions, PacketAccounting, PcapFormatError, iter_flows
from mmae_hf.traffic.pcapio import CaptureReader

ENGINES = ("reference", "fast")


def flows_of(data, engine="fast", **opts):
    acc = PacketAccounting()
    out = list(iter_flows(data, FlowOptions(**opts), accounting=acc, engine=engine))
    return out, acc


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(endian, nano, engine):
    recs = [(1700000000.123456 + t, ether(p)) for t, p in handshake()]
    flows, acc = flows_of(pcap_bytes(recs, endian=endian, nano=nano), engine)
    assert len(flows) == 1 and acc.packets_in_flows == acc.packets_read == len(recs) == 8
    f = flows[0]
    assert f.start_time == pytest.approx(1700000000.123456, abs=1e-6)
    assert f.packet_iats[1] == pytest.approx(0.01, abs=1e-6)
    assert (f.src_ip, f.dst_ip, f.src_port, f.dst_port, f.protocol) == ("10.0.0.1", "10.0.0.2", 40000, 443, 6)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_with_own_resolution(endian, engine):
    # interface 0: Ethernet, microseconds (default); 1: raw IP, nanoseconds; 2: SLL, 2^-20 s
    pk = handshake(t0=1600000000.5)
    packets = []
    for i, (t, p) in enumerate(pk):
        iface = i % 3
        frame = {0: ether, 1: LINK[101], 2: LINK[113]}[iface](p)
        packets.append((iface, t, frame))
    data = pcapng_bytes([(1, None), (101, 9), (113, 0x80 | 20)], packets, endian=endian)
    flows, acc = flows_of(data, engine)
    assert len(flows) == 1 and flows[0].packet_count == len(pk)
    iats = flows[0].packet_iats
    assert iats[0] == 0 and np.allclose(iats[1:], 0.01, atol=2e-6)  # all three tick units decode to the same clock
    assert flows[0].start_time == pytest.approx(1600000000.5, abs=1e-6)


def test_pcapng_simple_packet_blocks_and_multiple_sections():
    pk = handshake()
    s1 = pcapng_bytes([(1, None)], [(0, t, ether(p)) for t, p in pk[:4]], endian="<")
    s2 = pcapng_bytes([(101, None)], [(0, t, p) for t, p in pk[4:]], endian=">")
    flows, acc = flows_of(s1 + s2)
    assert acc.packets_read == len(pk) and acc.packets_in_flows == len(pk)
    spb = pcapng_bytes([(1, None)], [(0, 0.0, ether(p)) for _, p in pk], simple=True)
    flows, acc = flows_of(spb)
    assert acc.packets_in_flows == len(pk)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("linktype", [1, 113, 276, 101, 12, 14, 0, 108])
@pytest.mark.parametrize("v6", [False, True])
def test_link_types(linktype, v6, engine):
    if v6:
        pk = [(t, tcp(src="2001:db8::1", dst="2001:db8::2", flags=f, payload=b"abc" * i, v6=True))
              for i, (t, f) in enumerate([(0.0, "S"), (0.1, "A"), (0.2, "PA")])]  # fmt: skip
    else:
        pk = handshake()
    data = pcap_bytes([(t, LINK[linktype](p)) for t, p in pk], linktype=linktype)
    flows, acc = flows_of(data, engine)
    assert acc.skipped == {} and len(flows) == 1
    assert flows[0].packet_count == len(pk)
    first_ip = pk[0][1]
    # the header part starts at the IP header whatever the link layer was
    assert flows[0].input_bytes[0] == first_ip[0]


def test_vlan_and_qinq_tags():
    pk = handshake()
    tags = [[(0x8100, 5)], [(0x88A8, 100), (0x8100, 5)], [(0x9100, 7), (0x8100, 5)]]
    frames = [(t, ether(p, vlans=tags[i % 3])) for i, (t, p) in enumerate(pk)]
    flows, acc = flows_of(pcap_bytes(frames))
    assert acc.skipped == {} and len(flows) == 1 and flows[0].packet_count == len(pk)


@pytest.mark.parametrize("engine", ENGINES)
def test_ipv6_extension_headers_are_skipped(engine):
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
    from scapy.packet import Raw

    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    l4 = TCP(sport=1234, dport=443, flags="PA") / Raw(b"payload!")
    pkts = [
        bytes(base / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / l4),
        bytes(base / IPv6ExtHdrFragment(offset=0, m=0) / l4),  # atomic fragment: carries the whole segment
        bytes(base / IPv6ExtHdrFragment(offset=100, m=0, nh=6) / Raw(b"x" * 16)),  # non-first fragment
    ]
    flows, acc = flows_of(pcap_bytes([(i * 0.1, ether(p)) for i, p in enumerate(pkts)]), engine)
    assert acc.skipped == {"ip_fragment": 1}
    assert len(flows) == 1 and flows[0].packet_count == 2
    assert flows[0].src_port == 1234 and flows[0].dst_port == 443
    assert flows[0].flow_stats[15] == pytest.approx(8.0)  # payload_mean: the 8 payload bytes were found


@pytest.mark.parametrize("engine", ENGINES)
def test_every_packet_is_accounted(engine):
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import ARP, Ether

    good = handshake()
    frames = [(t, ether(p)) for t, p in good]
    frames.append((1.0, bytes(Ether() / ARP())))
    frames.append((1.1, ether(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP()))))
    frames.append((1.2, ether(bytes(IP(src="1.1.1.1", dst="2.2.2.2", frag=10, proto=17) / (b"x" * 20)))))
    frames.append((1.3, ether(tcp())[:40]))  # TCP header cut by the capture
    bad_ihl = bytearray(tcp())
    bad_ihl[0] = 0x43
    frames.append((1.4, ether(bytes(bad_ihl))))
    data = pcap_bytes(frames)
    flows, acc = flows_of(data, engine)
    assert acc.skipped == {"non_ip": 1, "unsupported_transport": 1, "ip_fragment": 1, "truncated_frame": 1,
                           "malformed": 1}  # fmt: skip
    assert acc.packets_read == acc.packets_in_flows + acc.packets_skipped == len(frames)
    other_link = pcap_bytes([(0.0, ether(tcp()))], linktype=147)
    _, acc2 = flows_of(other_link, engine)
    assert acc2.skipped == {"unsupported_linktype": 1}
    dns = pcap_bytes([(0.0, ether(udp(dport=53))), (0.1, ether(udp(dport=5353))), (0.2, ether(udp(dport=443)))])
    flows, acc3 = flows_of(dns, engine, drop_service_chatter=True)
    assert acc3.skipped == {"filtered": 2} and len(flows) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_truncated_file_keeps_flows_before_damage(engine, tmp_path):
    a = handshake(cport=1111)
    b = handshake(cport=2222, t0=0.001)
    frames = [(t, ether(p)) for t, p in sorted(a + b)]
    data = pcap_bytes(frames)
    cut = data[: len(data) - 7]
    path = tmp_path / "cut.pcap"
    path.write_bytes(cut)
    flows, acc = flows_of(str(path), engine)
    assert len(acc.errors) == 1
    msg = acc.errors[0]
    assert "cut.pcap" in msg and "byte offset" in msg and "ends inside a record" in msg
    last_record = len(data) - (16 + len(frames[-1][1]))
    assert f"offset {last_record}" in msg
    assert acc.packets_read == len(frames) - 1 and sum(f.packet_count for f in flows) == len(frames) - 1
    with pytest.raises(PcapFormatError, match=r"cut\.pcap.*offset"):
        list(iter_flows(str(path), strict=True, engine=engine))


def test_corrupt_record_length_and_bad_magic(tmp_path):
    frames = [(t, ether(p)) for t, p in handshake()]
    data = bytearray(pcap_bytes(frames))
    # corrupt the 4th record's captured length
    off = 24
    for _ in range(3):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + 8, 0x7FFFFFFF)
    p = tmp_path / "bad.pcap"
    p.write_bytes(bytes(data))
    acc = PacketAccounting()
    flows = list(iter_flows(str(p), accounting=acc))
    assert acc.packets_read == 3 and sum(f.packet_count for f in flows) == 3
    assert "bad.pcap: corrupt record header" in acc.errors[0] and f"offset {off}" in acc.errors[0]
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"GIF89a......")
    with pytest.raises(PcapFormatError, match=r"junk\.pcap: not a pcap or pcapng file .* at byte offset 0"):
        list(iter_flows(str(junk), strict=True))


def test_pcapng_truncated_block_reported():
    pk = handshake()
    data = pcapng_bytes([(1, None)], [(0, t, ether(p)) for t, p in pk])
    acc = PacketAccounting()
    list(iter_flows(data[:-10], accounting=acc, source_name="x.pcapng"))
    assert acc.packets_read == len(pk) - 1 and "x.pcapng" in acc.errors[0] and "pcapng block" in acc.errors[0]


def test_reader_streams_in_blocks():
    frames = [(i * 0.001, ether(tcp(sport=1000 + i % 50, payload=b"z" * 200))) for i in range(3000)]
    data = pcap_bytes(frames)
    chunks = list(CaptureReader(data, block_size=64 << 10))
    assert len(chunks) > 5 and sum(len(c) for c in chunks) == 3000
    ts = np.concatenate([c.timestamp for c in chunks])
    assert np.allclose(ts, np.arange(3000) * 0.001, atol=1e-6)


def test_pcapng_undeclared_interface_is_damage():
    pk = handshake()
    packets = [(0, t, ether(p)) for t, p in pk]
    packets[5] = (3, packets[5][1], packets[5][2])  # only interface 0 exists
    acc = PacketAccounting()
    flows = list(iter_flows(pcapng_bytes([(1, None)], packets), accounting=acc, source_name="if.pcapng"))
    assert acc.packets_read == 5 and "undeclared interface 3" in acc.errors[0] and "if.pcapng" in acc.errors[0]
    assert sum(f.packet_count for f in flows) == 5


@pytest.mark.parametrize("engine", ENGINES)
def test_segmentation_offload_zero_ip_length(engine):
    big = bytearray(tcp(flags="PA", payload=b"q" * 3000))
    big[2:4] = b"\0\0"  # TSO capture: IPv4 total length 0
    flows, acc = flows_of(pcap_bytes([(0.0, ether(bytes(big)))]), engine)
    assert acc.skipped == {} and flows[0].packet_lengths[0] == len(big)
    assert flows[0].flow_stats[15] == 3000  # payload_mean


def test_impossible_length_inside_a_block_is_caught():
    from traffic_pcaps import raw_tcp

    frames = [
        (i * 0.001, ether(raw_tcp("10.0.0.1", "10.0.0.2", 1000 + i % 7, 80, payload=b"p" * 300))) for i in range(2000)
    ]
    data = bytearray(pcap_bytes(frames))
    rec = 24 + 10 * (16 + len(frames[0][1]))  # 11th record
    struct.pack_into("<I", data, rec + 8, (1 << 18) + 1)  # larger than any frame, still inside the file
    acc = PacketAccounting()
    flows = list(iter_flows(bytes(data), accounting=acc, source_name="mid.pcap", engine="fast"))
    assert acc.packets_read == 10 and sum(f.packet_count for f in flows) == 10
    assert acc.errors == [
        f"mid.pcap: corrupt record header: captured length {(1 << 18) + 1} exceeds {1 << 18} at byte offset {rec}"
    ]


def test_binary_file_objects(tmp_path):
    path = tmp_path / "obj.pcap"
    path.write_bytes(pcap_bytes([(t, ether(p)) for t, p in handshake()]))
    with open(path, "rb") as fh:
        flows = list(iter_flows(fh))
    assert len(flows) == 1 and flows[0].source_file.endswith("obj.pcap") and flows[0].packet_count == 8


def test_traffic_package_is_torch_free(tmp_path):
    """mmae_hf.traffic runs where torch and transformers cannot be imported (dataset building machines)."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes([(t, ether(p)) for t, p in handshake()]))
    repo = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["transformers"] = None
        sys.path.insert(0, {str(repo)!r})
        import mmae_hf  # the real package: without torch it skips the model registration
        assert not mmae_hf._HAS_TORCH
        import mmae_hf.traffic as traffic
        for engine in ("reference", "fast"):
            (flow,) = traffic.iter_flows({str(path)!r}, engine=engine)
            assert flow.packet_count == 8
        print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stderr[-2000:]
