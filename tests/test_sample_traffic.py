"""Checks on the committed sample captures in ``examples/sample_traffic/`` (the project's default data).

The sample must stay small, hold only loopback traffic, and split by capture file into train /
validation / test with every class in every split. Regenerate with
``scripts/capture_sample_traffic.py`` (see ``examples/sample_traffic/README.md``).
"""

import ipaddress
import struct
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "sample_traffic"
EXPECTED_CLASSES = {"https-bulk", "https-api", "tls-chat", "smtp-starttls", "udp-stream", "dtls-messaging"}
UDP_CLASSES = {"udp-stream", "dtls-messaging"}
MIN_FILES_PER_CLASS = 3
MIN_BIDIRECTIONAL_FLOWS_PER_CLASS = 50
MAX_TOTAL_BYTES = 5 * 1024 * 1024
MAX_FILE_BYTES = 1_000_000
LINKTYPE_ETHERNET = 1

PCAP_MAGICS = {  # magic as read little-endian -> (byte order, nanosecond timestamps)
    0xA1B2C3D4: ("<", False),
    0xD4C3B2A1: (">", False),
    0xA1B23C4D: ("<", True),
    0x4D3CB2A1: (">", True),
}


def read_pcap(path):
    """Small stdlib pcap reader: returns (linktype, snaplen, [(ts, caplen, wirelen, data), ...]).

    Raises AssertionError naming the file and offset on anything malformed, so a damaged sample
    file is reported precisely instead of being half-read.
    """
    blob = path.read_bytes()
    assert len(blob) >= 24, f"{path}: shorter than a pcap global header"
    (magic,) = struct.unpack("<I", blob[:4])
    assert magic in PCAP_MAGICS, f"{path}: not a classic pcap file (magic {magic:#010x}); pcapng is not used here"
    order, nanos = PCAP_MAGICS[magic]
    major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(order + "HHiIII", blob[4:24])
    assert (major, minor) == (2, 4), f"{path}: pcap version {major}.{minor}"
    records, offset = [], 24
    while offset < len(blob):
        assert offset + 16 <= len(blob), f"{path}: truncated record header at byte {offset}"
        sec, frac, caplen, wirelen = struct.unpack(order + "IIII", blob[offset : offset + 16])
        assert caplen <= snaplen and caplen <= wirelen, f"{path}: bad record lengths at byte {offset}"
        assert offset + 16 + caplen <= len(blob), f"{path}: truncated packet data at byte {offset}"
        ts = sec + frac / (1e9 if nanos else 1e6)
        records.append((ts, caplen, wirelen, blob[offset + 16 : offset + 16 + caplen]))
        offset += 16 + caplen
    return linktype, snaplen, records


def parse_ethernet(frame):
    """(src_ip, dst_ip, proto, sport, dport) of an Ethernet/IPv4|IPv6/TCP|UDP frame, else None."""
    (ethertype,) = struct.unpack("!H", frame[12:14])
    ip = frame[14:]
    if ethertype == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        l4 = ip[ihl:]
    elif ethertype == 0x86DD:
        proto = ip[6]
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        l4 = ip[40:]
    else:
        return None
    if proto not in (6, 17):
        return None
    sport, dport = struct.unpack("!HH", l4[:4])
    return src, dst, proto, sport, dport


@pytest.fixture(scope="module")
def captures():
    """{label: {file: parsed records}} for the whole committed sample (read once)."""
    assert SAMPLE_DIR.is_dir(), f"{SAMPLE_DIR} is missing; run scripts/capture_sample_traffic.py"
    found = defaultdict(dict)
    for path in sorted(SAMPLE_DIR.glob("*/*.pcap")):
        found[path.parent.name][path.name] = read_pcap(path)
    return found


def test_expected_classes_each_with_several_capture_files(captures):
    # >= 3 files per class: a split by capture file can then put every class in train, validation and test
    assert set(captures) == EXPECTED_CLASSES
    for label, files in captures.items():
        assert len(files) >= MIN_FILES_PER_CLASS, f"{label}: only {len(files)} capture files"


def test_sample_is_small(captures):
    paths = list(SAMPLE_DIR.glob("*/*.pcap"))
    total = sum(p.stat().st_size for p in paths)
    assert total < MAX_TOTAL_BYTES, f"sample is {total} bytes"
    for p in paths:
        assert p.stat().st_size < MAX_FILE_BYTES, f"{p} is {p.stat().st_size} bytes"
    # nothing but pcaps and the README in the sample tree (no stray certificates or keys)
    others = [p for p in SAMPLE_DIR.rglob("*") if p.is_file() and p.suffix != ".pcap" and p.name != "README.md"]
    assert not others, others


def test_files_are_valid_ethernet_pcaps_with_packets(captures):
    for label, files in captures.items():
        for name, (linktype, snaplen, records) in files.items():
            assert linktype == LINKTYPE_ETHERNET, f"{label}/{name}: linktype {linktype}"
            assert records, f"{label}/{name}: no packets"
            times = [r[0] for r in records]
            assert times == sorted(times), f"{label}/{name}: timestamps go backwards"
            # truncation at the snap length is allowed, but the IP header and the first L4 bytes must be kept
            assert snaplen >= 256, f"{label}/{name}: snaplen {snaplen}"


def test_scapy_reads_the_same_records(captures):
    """An independent reader (scapy's) agrees with ours on one file per class."""
    for label, files in captures.items():
        name, (_, _, records) = next(iter(files.items()))
        reader = RawPcapReader(str(SAMPLE_DIR / label / name))
        try:
            lengths = [(meta.caplen, meta.wirelen) for _, meta in reader]
        finally:
            reader.close()
        assert lengths == [(r[1], r[2]) for r in records], f"{label}/{name}"


def test_only_loopback_addresses(captures):
    for label, files in captures.items():
        for name, (_, _, records) in files.items():
            for i, rec in enumerate(records):
                parsed = parse_ethernet(rec[3])
                assert parsed is not None, f"{label}/{name}: packet {i} is not TCP/UDP over IP"
                src, dst = parsed[0], parsed[1]
                assert src.is_loopback and dst.is_loopback, f"{label}/{name}: packet {i} {src} -> {dst}"


def _flows(records):
    """Bidirectional 5-tuple -> Counter of directions seen ('fwd' = first packet's direction)."""
    flows = {}
    for rec in records:
        src, dst, proto, sport, dport = parse_ethernet(rec[3])
        key = (proto, *sorted([(src, sport), (dst, dport)]))
        flows.setdefault(key, (src, sport))
        flows_dir = "fwd" if flows[key] == (src, sport) else "rev"
        yield key, flows_dir


def test_every_class_has_enough_bidirectional_flows(captures):
    per_class = {}
    for label, files in captures.items():
        total = 0
        protocols = set()
        for name, (_, _, records) in files.items():
            directions = defaultdict(Counter)
            for key, direction in _flows(records):
                directions[key][direction] += 1
                protocols.add(key[0])
            bidirectional = sum(1 for c in directions.values() if c["fwd"] and c["rev"])
            assert bidirectional >= 3, f"{label}/{name}: only {bidirectional} bidirectional flows"
            total += bidirectional
        per_class[label] = total
        assert protocols == ({17} if label in UDP_CLASSES else {6}), f"{label}: protocols {protocols}"
    weak = {k: v for k, v in per_class.items() if v < MIN_BIDIRECTIONAL_FLOWS_PER_CLASS}
    assert not weak, f"classes with too few bidirectional flows: {weak} (all: {per_class})"


def test_each_tcp_session_starts_with_a_handshake(captures):
    """Captures start before the traffic: every TCP flow's first packet is a SYN (no mid-flow starts)."""
    for label, files in captures.items():
        if label in UDP_CLASSES:
            continue
        for name, (_, _, records) in files.items():
            seen = set()
            for rec in records:
                frame = rec[3]
                src, dst, proto, sport, dport = parse_ethernet(frame)
                key = (proto, *sorted([(src, sport), (dst, dport)]))
                if key in seen:
                    continue
                seen.add(key)
                (ethertype,) = struct.unpack("!H", frame[12:14])
                l4 = frame[14 + ((frame[14] & 0x0F) * 4 if ethertype == 0x0800 else 40) :]
                flags = l4[13]
                assert flags & 0x02 and not flags & 0x10, f"{label}/{name}: flow {key} does not start with SYN"


def test_readme_table_matches_the_files(captures):
    """The README's per-class file and flow counts describe the committed captures (no drift after a recapture)."""
    readme = (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    assert "CC0" in readme
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[2].isdigit():
            rows[cells[0].strip("`")] = (int(cells[2]), int(cells[3]))
    assert set(rows) == set(captures), f"README table classes {sorted(rows)}"
    for label, files in captures.items():
        flows = sum(len({key for key, _ in _flows(records)}) for _, _, records in files.values())
        found = (len(files), flows)
        assert rows[label] == found, f"{label}: README says (files, flows) = {rows[label]}, the files give {found}"
