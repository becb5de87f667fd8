#!/usr/bin/env python
"""Make the committed NetMamba golden arrays: crafted captures + flows cut from examples/sample_traffic.

    python tests/data/netmamba_golden/generate.py        # rewrites this folder (about 5 s; needs scapy 2.5.0)

The arrays come from the scapy reference in ``tests/netmamba_reference.py`` (scapy's dissection, not
``mmae_hf.traffic.netmamba``), which a ``shared_data`` test checks against the arrays NetMamba's own code made
(``../shared/reference/golden_netmamba``). Outputs, all in this folder:

- ``crafted/cNN_<what>.pcap``: one small capture per case of the extraction rules (options, trailers, tunnels,
  fragments, ports that scapy dissects, odd link types, ...), crafted here with scapy;
- ``flows/<class>-<session>.pcap``: the first records of one real flow of the committed sample traffic;
- ``golden.npz``: every array (uint8 [1600]) under its ``output`` name;
- ``manifest.csv``: one row per array: ``input`` (relative to this folder), ``direction_key`` (``BIDIR`` for the
  whole file, else ``src:sport > dst:dport PROTO`` as in the packets), ``n_packets`` (records of that input or
  direction), ``remove_ip``, ``flow_route`` (True when the input is one TCP/UDP flow, so ``iter_flows`` must give
  the same array), ``output`` and ``sha256`` (of the 1600 bytes).
"""

import csv
import hashlib
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "tests"))

from netmamba_reference import reference_array, split_by_direction  # noqa: E402

T0 = 1_700_000_000.0
SAMPLE_FLOWS = [
    ("https-api", "00"),
    ("https-bulk", "00"),
    ("tls-chat", "00"),
    ("smtp-starttls", "00"),
    ("udp-stream", "00"),
    ("dtls-messaging", "00"),
    ("tls-chat", "03"),
]  # 03: IPv6 (zero arrays)
RECORDS_PER_FLOW = 8
# cases that are not one TCP/UDP flow: only the per-file route reproduces them
FILE_ONLY = {"c03", "c04", "c07", "c08", "c11", "c12"}
# cases that also get remove_ip=False arrays (every case does: the addresses matter in each)


def _pcap(path: Path, records, linktype: int = 1, snaplen: int = 65535) -> Path:
    """A classic little-endian microsecond pcap of ``[(timestamp, frame bytes[, original length])]``."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for record in records:
        ts, frame = record[0], bytes(record[1])
        original = record[2] if len(record) > 2 else len(frame)
        sec = int(ts)
        out.append(struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(frame), original) + frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(out))
    return path


def crafted_cases() -> dict[str, tuple[list, int]]:
    """{name: (records, linktype)}: each case exercises one rule of the extraction."""
    from scapy.all import ARP, DNS, DNSQR, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, Raw

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    def tcp(payload=b"", sport=41000, dport=443, flags="PA", seq=7000, **ip):
        ip = {"src": "10.1.0.1", "dst": "10.1.0.2", **ip}
        return IP(**ip) / TCP(sport=sport, dport=dport, flags=flags, seq=seq) / (Raw(payload) if payload else b"")

    def udp(payload=b"x", sport=42000, dport=4433, **ip):
        ip = {"src": "10.1.0.1", "dst": "10.1.0.2", **ip}
        return IP(**ip) / UDP(sport=sport, dport=dport) / Raw(payload)

    def frames(*packets, start=T0):
        return [(start + 0.01 * i, bytes(eth / p) if not isinstance(p, bytes) else p) for i, p in enumerate(packets)]

    body = bytes(range(256)) * 2
    cases = {}
    cases["c01_ip_and_tcp_options"] = (
        frames(
            IP(src="10.1.0.1", dst="10.1.0.2", options=[b"\x94\x04\x00\x00", b"\x01\x01\x01\x00"])
            / TCP(
                sport=41000,
                dport=443,
                flags="PA",
                options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("NOP", None), ("NOP", None), ("SAckOK", b"")],
            )
            / Raw(body[:90])
        ),
        1,
    )
    cases["c02_header_over_80_bytes"] = (
        frames(
            IP(src="10.1.0.1", dst="10.1.0.2", options=[b"\x01" * 40])
            / TCP(sport=41000, dport=443, flags="PA", options=[("NOP", None)] * 40)
            / Raw(body[:280])
        ),
        1,
    )
    cases["c03_arp_then_tcp"] = (frames(ARP(psrc="10.1.0.1", pdst="10.1.0.2"), tcp(body[:50])), 1)
    cases["c04_ipv6_then_ipv4"] = (
        frames(
            IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=41000, dport=443, flags="PA") / Raw(body[:40]),
            tcp(body[:60]),
        ),
        1,
    )
    cases["c05_vlan_udp"] = ([(T0, bytes(eth / Dot1Q(vlan=42) / udp(body[:70])))], 1)
    long_frame = bytes(eth / tcp(body * 3))
    cases["c06_truncated_record"] = ([(T0, long_frame[:120], len(long_frame))], 1)
    cases["c07_non_first_fragment"] = (
        frames(IP(src="10.1.0.1", dst="10.1.0.2", proto=17, frag=185) / Raw(body[:64])),
        1,
    )
    cases["c08_icmp_echo"] = (
        frames(IP(src="10.1.0.1", dst="10.1.0.2") / ICMP(type=8, id=7, seq=1) / Raw(body[:40])),
        1,
    )
    short = bytearray(bytes(eth / udp(body[:48])))
    struct.pack_into("!H", short, 14 + 20 + 4, 8 + 24)  # the UDP length says 24 payload bytes of the 48 carried
    cases["c09_udp_length_short"] = ([(T0, bytes(short))], 1)
    empty = bytearray(bytes(eth / udp(body[:48])))
    struct.pack_into("!H", empty, 14 + 20 + 4, 8)  # the UDP length says empty
    cases["c10_udp_length_8"] = ([(T0, bytes(empty))], 1)
    cases["c11_ipv4_in_ipv6"] = (frames(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=4) / tcp(body[:30])), 1)
    cases["c12_ip_in_ip"] = (frames(IP(src="192.0.2.1", dst="192.0.2.2", proto=4) / tcp(body[:30])), 1)
    six = [tcp(body[i * 10 : i * 10 + 20 + i], seq=100 + i) for i in range(6)]
    cases["c13_six_records_time_decreasing"] = ([(T0 + 10 - i, bytes(eth / p)) for i, p in enumerate(six)], 1)
    cases["c14_http_on_tcp_80"] = (frames(tcp(b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n", dport=80)), 1)
    cases["c15_dns_query_udp_53"] = (
        frames(
            IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=42000, dport=53) / DNS(rd=1, qd=DNSQR(qname="example.org"))
        ),
        1,
    )
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", 0x0800)
    cases["c16_linux_cooked"] = ([(T0, sll + bytes(tcp(body[:44])))], 113)
    cases["c17_one_zero_byte_payload"] = (frames(tcp(b"\x00", seq=0x00A00B00)), 1)
    cases["c18_two_zero_bytes_payload"] = (frames(tcp(b"\x00\x00", seq=0x00000100)), 1)
    cases["c19_ethernet_padding_on_ack"] = (frames(tcp(flags="A")), 1)  # 54-byte frame padded to 60
    trailer = bytes(eth / udp(body[:20])) + b"\xee" * 12
    cases["c20_trailer_after_udp_payload"] = ([(T0, trailer)], 1)
    cases["c21_udp_4500_esp"] = (frames(udp(body[:120], sport=4500, dport=4500)), 1)
    cases["c22_udp_500_isakmp"] = (
        frames(udp(bytes(8) * 2 + b"\x01\x10\x02\x00" + bytes(4) + b"\x00\x00\x00\x1c", sport=500, dport=500)),
        1,
    )
    cases["c23_opaque_bytes_on_udp_53"] = (frames(udp(body[7 : 7 + 90], sport=53, dport=43000)), 1)
    cases["c24_raw_ip_link_type"] = ([(T0, bytes(tcp(body[:33])))], 101)
    cases["c25_bidirectional_tcp"] = (
        frames(
            tcp(flags="S", seq=100),
            tcp(flags="SA", seq=900, sport=443, dport=41000, src="10.1.0.2", dst="10.1.0.1"),
            tcp(flags="A", seq=101),
            tcp(body[:100], seq=101),
            tcp(body[100:180], seq=901, sport=443, dport=41000, src="10.1.0.2", dst="10.1.0.1"),
            tcp(body[:7], seq=201),
        ),
        1,
    )
    return cases


def sample_flow_records(label: str, session: str) -> tuple[list, int]:
    """The first records of the first flow (canonical 5-tuple, in file order) of a sample-traffic capture."""
    from scapy.all import IP, TCP, UDP, Ether, IPv6, RawPcapReader

    path = REPO / "examples" / "sample_traffic" / label / f"{label}-{session}.pcap"
    wanted, records = None, []
    reader = RawPcapReader(str(path))
    linktype = reader.linktype
    for data, meta in reader:
        packet = Ether(data)
        l3 = packet[IP] if IP in packet else (packet[IPv6] if IPv6 in packet else None)
        l4 = packet[TCP] if TCP in packet else (packet[UDP] if UDP in packet else None)
        if l3 is None or l4 is None:
            continue
        key = frozenset([(l3.src, l4.sport), (l3.dst, l4.dport)])
        wanted = wanted or key
        if key == wanted:
            records.append((meta.sec + meta.usec / 1e6, data, meta.wirelen))
        if len(records) == RECORDS_PER_FLOW:
            break
    reader.close()
    return records, linktype


def main() -> int:
    inputs = {}  # relative path -> flow_route
    for name, (records, linktype) in crafted_cases().items():
        _pcap(HERE / "crafted" / f"{name}.pcap", records, linktype)
        inputs[f"crafted/{name}.pcap"] = name[:3] not in FILE_ONLY
    for label, session in SAMPLE_FLOWS:
        records, linktype = sample_flow_records(label, session)
        _pcap(HERE / "flows" / f"{label}-{session}.pcap", records, linktype, snaplen=1514)
        inputs[f"flows/{label}-{session}.pcap"] = True

    rows, arrays = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (relative, flow_route) in enumerate(sorted(inputs.items())):
            path = HERE / relative
            stem = Path(relative).stem
            sources = [("BIDIR", path, "bidir")]
            if relative.startswith("flows/") or stem.startswith("c25"):
                directions = split_by_direction(path, Path(tmp) / str(index))
                sources += [(key, split, f"d{i}") for i, (key, split) in enumerate(directions.items())]
            for key, source, tag in sources:
                from scapy.all import PcapReader

                with PcapReader(str(source)) as reader:
                    count = sum(1 for _ in reader)
                for remove_ip in (True, False):
                    output = f"{stem}__{tag}__rip{int(remove_ip)}"
                    array = reference_array(source, remove_ip=remove_ip)
                    arrays[output] = array
                    rows.append(
                        {
                            "input": relative,
                            "direction_key": key,
                            "n_packets": count,
                            "remove_ip": remove_ip,
                            "flow_route": flow_route,
                            "output": output,
                            "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
                        }
                    )
    np.savez_compressed(HERE / "golden.npz", **arrays)
    with open(HERE / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} arrays from {len(inputs)} inputs -> {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
