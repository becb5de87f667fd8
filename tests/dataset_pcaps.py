"""Tiny scapy-made captures for the dataset-builder tests (not a test module itself)."""

import hashlib
from pathlib import Path

T0 = 1_700_000_000.0


def flow(
    seed: str,
    *,
    packets: int = 3,
    proto: str = "tcp",
    sport: int = 40000,
    dport: int = 443,
    src: str = "10.0.0.1",
    dst: str = "192.0.2.10",
    start: float = T0,
    payload: bytes | None = None,
) -> dict:
    """One flow whose payload bytes derive from ``seed`` (different seeds give different model inputs)."""
    body = payload if payload is not None else hashlib.sha256(seed.encode()).digest() * 2
    return {
        "proto": proto,
        "sport": sport,
        "dport": dport,
        "src": src,
        "dst": dst,
        "start": start,
        "payloads": [body + bytes([k]) for k in range(packets)],
    }


def write_pcap(path, flows, pcapng: bool = False) -> Path:
    """Write the flows (alternating directions, 10 ms apart) as one Ethernet pcap (or pcapng, whatever the name)."""
    from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap, wrpcapng

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    packets = []
    for f in flows:
        for k, data in enumerate(f["payloads"]):
            fwd = k % 2 == 0
            ip = IP(src=f["src"], dst=f["dst"]) if fwd else IP(src=f["dst"], dst=f["src"])
            ports = (f["sport"], f["dport"]) if fwd else (f["dport"], f["sport"])
            l4 = (
                TCP(sport=ports[0], dport=ports[1], flags="PA", seq=1000 + 100 * k)
                if f["proto"] == "tcp"
                else UDP(sport=ports[0], dport=ports[1])
            )
            pkt = Ether(src="00:00:00:00:00:01", dst="00:00:00:00:00:02") / ip / l4 / Raw(data)
            pkt.time = f["start"] + 0.01 * k
            packets.append(pkt)
    packets.sort(key=lambda p: float(p.time))
    (wrpcapng if pcapng else wrpcap)(str(path), packets)
    return path


def make_tree(root, spec: dict, flows_per_file: int = 2) -> Path:
    """``spec``: {label: number of files}; file j of a label gets ``flows_per_file`` distinct flows,
    started one hour apart per file so that time splits have an order."""
    root = Path(root)
    for li, (label, num_files) in enumerate(sorted(spec.items())):
        for j in range(num_files):
            flows = [
                flow(f"{label}/{j}/{i}", sport=40000 + i, start=T0 + 3600 * j + i, dport=443 + li)
                for i in range(flows_per_file)
            ]
            write_pcap(root / label / f"cap{j:02d}.pcap", flows)
    return root
