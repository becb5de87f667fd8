"""An independent reference for NetMamba's 1600-byte flow arrays, written with scapy (not a test module itself).

`mmae_hf.traffic.netmamba` reads raw bytes and models where scapy's layers would start. This module instead lets
scapy 2.5.0 (the version NetMamba pins) dissect every record, exactly as the rules observed from NetMamba's
extraction say (``shared/reference/golden_netmamba/README.md``, rules 1-7):

1. the first five records of the capture in file order, each one using up a slot;
2. a record yields bytes only when scapy finds an IPv4 (``IP``) layer in it, otherwise 320 zero bytes;
3. the slot is built from that IPv4 layer's serialisation (to the end of the captured frame, trailer included);
4. with ``remove_ip`` the source and destination addresses are set to 0.0.0.0 (nothing is recomputed);
5. the payload is the serialisation of scapy's ``Raw`` layer (empty when scapy left none);
6. the header is the hex of the whole IPv4 serialisation with every occurrence of the payload's hex deleted;
7. both hex strings are cut or padded with ``0`` digits to 160 / 480 digits, slots are concatenated and padded.

It is used twice: ``tests/data/netmamba_golden/generate.py`` makes the committed golden arrays with it, and a
``shared_data`` test checks that it reproduces the arrays made by NetMamba's own code (``../shared``).
"""

from pathlib import Path

import numpy as np

SLOT_HEADER_DIGITS = 160
SLOT_PAYLOAD_DIGITS = 480
NUM_SLOTS = 5


def _scapy():
    """scapy with its default layers loaded (``scapy.all``): the port bindings decide what becomes ``Raw``."""
    import scapy.all  # noqa: F401

    return scapy.all


def reference_slot_hex(packet, remove_ip: bool) -> str:
    """The 640 hex digits of one record's slot."""
    from scapy.layers.inet import IP
    from scapy.packet import Raw

    if not packet.haslayer(IP):
        return "0" * (SLOT_HEADER_DIGITS + SLOT_PAYLOAD_DIGITS)
    payload = bytes(packet[Raw]) if packet.haslayer(Raw) else b""
    ip = packet[IP]
    if remove_ip:
        ip.src = "0.0.0.0"
        ip.dst = "0.0.0.0"
    whole_hex = bytes(ip).hex()
    payload_hex = payload.hex()
    header_hex = whole_hex.replace(payload_hex, "") if payload_hex else whole_hex
    return header_hex[:SLOT_HEADER_DIGITS].ljust(SLOT_HEADER_DIGITS, "0") + payload_hex[:SLOT_PAYLOAD_DIGITS].ljust(
        SLOT_PAYLOAD_DIGITS, "0"
    )


def reference_array(pcap: str | Path, remove_ip: bool = True) -> np.ndarray:
    """The uint8 [1600] array of a (single-flow or single-direction) capture file."""
    from scapy.utils import PcapReader

    _scapy()
    digits = []
    with PcapReader(str(pcap)) as reader:
        for packet in reader:
            if len(digits) == NUM_SLOTS:
                break
            digits.append(reference_slot_hex(packet, remove_ip))
    text = "".join(digits).ljust(NUM_SLOTS * (SLOT_HEADER_DIGITS + SLOT_PAYLOAD_DIGITS), "0")
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).copy()


def direction_key_of(packet) -> str | None:
    """``src:sport > dst:dport PROTO`` as the packet carries it (IPv6 hosts in brackets), None for non-TCP/UDP."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    l3 = packet[IP] if packet.haslayer(IP) else (packet[IPv6] if packet.haslayer(IPv6) else None)
    if l3 is None:
        return None
    l4 = packet[TCP] if packet.haslayer(TCP) else (packet[UDP] if packet.haslayer(UDP) else None)
    if l4 is None:
        return None
    host = (lambda a: f"[{a}]") if isinstance(l3, IPv6) else (lambda a: a)
    proto = "TCP" if isinstance(l4, TCP) else "UDP"
    return f"{host(l3.src)}:{l4.sport} > {host(l3.dst)}:{l4.dport} {proto}"


def split_by_direction(pcap: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write the records of each direction (5-tuple as seen, not canonicalised) to their own classic pcap, in
    file order, with the original link type: what NetMamba's splitter does before extraction."""
    from scapy.utils import PcapReader, PcapWriter

    _scapy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list] = {}
    with PcapReader(str(pcap)) as reader:
        linktype = reader.linktype
        for packet in reader:
            key = direction_key_of(packet)
            if key is not None:
                groups.setdefault(key, []).append(packet)
    files = {}
    for index, (key, packets) in enumerate(groups.items()):
        path = out_dir / f"d{index}.pcap"
        with PcapWriter(str(path), linktype=linktype, sync=True) as writer:
            for packet in packets:
                writer.write(packet)
        files[key] = path
    return files
