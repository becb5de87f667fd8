"""Helpers for the traffic tests: craft packets with scapy and write them as pcap / pcapng of any flavour."""

import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw


def tcp(
    src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=443, flags="A", seq=1000, ack=0, payload=b"", v6=False, **ip
):
    l3 = IPv6(src=src, dst=dst, **ip) if v6 else IP(src=src, dst=dst, **ip)
    pkt = l3 / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    return bytes(pkt / Raw(payload)) if payload else bytes(pkt)


def udp(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=53, payload=b"x", v6=False, **ip):
    l3 = IPv6(src=src, dst=dst, **ip) if v6 else IP(src=src, dst=dst, **ip)
    return bytes(l3 / UDP(sport=sport, dport=dport) / Raw(payload))


def handshake(
    client="10.0.0.1", server="10.0.0.2", cport=40000, sport=443, t0=0.0, data=(b"hello", b"world"), close="fin"
):
    """A small TCP connection as [(ts, ip_bytes)]."""
    c = dict(src=client, dst=server, sport=cport, dport=sport)
    s = dict(src=server, dst=client, sport=sport, dport=cport)
    pk = [
        tcp(**c, flags="S", seq=100),
        tcp(**s, flags="SA", seq=5000, ack=101),
        tcp(**c, flags="A", seq=101, ack=5001),
    ]
    seq_c, seq_s = 101, 5001
    for i, d in enumerate(data):
        if i % 2 == 0:
            pk.append(tcp(**c, flags="PA", seq=seq_c, ack=seq_s, payload=d))
            seq_c += len(d)
        else:
            pk.append(tcp(**s, flags="PA", seq=seq_s, ack=seq_c, payload=d))
            seq_s += len(d)
    if close == "fin":
        pk += [
            tcp(**c, flags="FA", seq=seq_c, ack=seq_s),
            tcp(**s, flags="FA", seq=seq_s, ack=seq_c + 1),
            tcp(**c, flags="A", seq=seq_c + 1, ack=seq_s + 1),
        ]
    elif close == "rst":
        pk.append(tcp(**c, flags="R", seq=seq_c))
    return [(t0 + 0.01 * i, p) for i, p in enumerate(pk)]


# ---------------------------------------------------------------- link layers
def ether(ip: bytes, vlans=(), ethertype=None):
    etype = ethertype if ethertype is not None else (0x86DD if ip[0] >> 4 == 6 else 0x0800)
    out = b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb"
    for tpid, vid in vlans:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", etype) + ip


def sll(ip: bytes):
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x00\x11\x22\x33\x44\x55\x00\x00", etype) + ip


def sll2(ip: bytes):
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", etype, 0, 2, 1, 0, 6, b"\x00\x11\x22\x33\x44\x55\x00\x00") + ip


def null(ip: bytes, endian="<", family=None):
    fam = family if family is not None else (30 if ip[0] >> 4 == 6 else 2)
    return struct.pack(endian + "I", fam) + ip


LINK = {1: ether, 113: sll, 276: sll2, 101: lambda ip: ip, 12: lambda ip: ip, 14: lambda ip: ip,
        0: lambda ip: null(ip, "<"), 108: lambda ip: null(ip, ">")}  # fmt: skip


# ---------------------------------------------------------------- containers
def pcap_bytes(records, linktype=1, endian="<", nano=False, snaplen=262144):
    """records: [(ts, frame)] or [(ts, frame, origlen)]."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for rec in records:
        ts, frame = rec[0], rec[1]
        orig = rec[2] if len(rec) > 2 else len(frame)
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        out.append(struct.pack(endian + "IIII", sec, frac, len(frame), orig) + frame)
    return b"".join(out)


def _block(endian, btype, body):
    body += b"\0" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack(endian + "II", btype, total) + body + struct.pack(endian + "I", total)


def pcapng_bytes(interfaces, packets, endian="<", simple=False):
    """interfaces: [(linktype, tsresol byte or None)]; packets: [(iface, ts, frame)]."""
    out = [_block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    units = []
    for linktype, res in interfaces:
        opts = b""
        if res is not None:
            opts = struct.pack(endian + "HH", 9, 1) + bytes([res]) + b"\0\0\0" + struct.pack(endian + "HH", 0, 0)
        out.append(_block(endian, 1, struct.pack(endian + "HHI", linktype, 0, 262144) + opts))
        if res is None:
            units.append(10**6)
        else:
            units.append(2 ** (res & 0x7F) if res & 0x80 else 10**res)
    for iface, ts, frame in packets:
        if simple:
            out.append(_block(endian, 3, struct.pack(endian + "I", len(frame)) + frame))
            continue
        ticks = round(ts * (units[iface] if iface < len(units) else 10**6))
        body = struct.pack(endian + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame
        out.append(_block(endian, 6, body))
    return b"".join(out)


def raw_tcp(src: str, dst: str, sport: int, dport: int, flags: int = 0x18, seq: int = 0, ack: int = 0, payload=b""):
    """IPv4/TCP bytes without scapy (fast, for many packets; checksums left 0)."""
    import socket

    total = 40 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return ip + struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 8192, 0, 0) + payload
