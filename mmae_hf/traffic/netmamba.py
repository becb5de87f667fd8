"""NetMamba-compatible slots: a re-implementation, from the documented rules, of NetMamba's per-packet extraction.

NetMamba (and the 1600-byte part of MMAE) turns each packet into ``[80 header | 240 payload]`` bytes with scapy:
the IPv4 layer (addresses zeroed), the hex string of the ``Raw`` layer deleted from the hex string of the IPv4 layer
by ``str.replace`` (so every occurrence is deleted, even across byte boundaries), then both hex strings cut or padded
with ``0`` digits to 160 / 480 digits. Packets without an IPv4 layer give 320 zero bytes. The rules, observed by
experiment, are in ``shared/reference/golden_netmamba/README.md``. This module needs no scapy: it decides where
scapy's ``Raw`` layer would start from the raw bytes, modelling the few scapy dissectors that matter (DNS on UDP/TCP
53, 5353, 5355; ESP on UDP 4500; ISAKMP on UDP 500; ICMP; IP-in-IP; IPv4-in-IPv6).
"""

import struct

import numpy as np

from .pcapio import CaptureReader

# UDP ports for which scapy 2.5 dissects the whole datagram into layers without a Raw part.
_UDP_NO_RAW = (500, 4500)
_DNS_PORTS = (53, 5353, 5355)


def _dns_raw_offset(msg: bytes, over_tcp: bool) -> int | None:
    """Where scapy 2.5's DNS dissector leaves undissected bytes (offset into ``msg``), or None if it raises."""
    base = 0
    if over_tcp:
        if len(msg) < 2:
            return None
        dns_len = struct.unpack("!H", msg[:2])[0]
        if dns_len < 14 or len(msg) < dns_len:
            return None
        base = 2
    if len(msg) < base + 12:
        return None  # scapy pads missing fixed fields; treat a short message as fully dissected header
    counts = struct.unpack("!HHHH", msg[base + 4 : base + 12])
    s = msg[base + 12 :]
    p = 0
    positioned = False  # whether the previous field handed on a (string, position) pair
    for index, count in enumerate(counts):
        if not positioned:
            p = 0
        if count > len(s):
            positioned = False  # field skipped; the next one starts from the beginning again
            continue
        for _ in range(count):
            p = _skip_name(s, p)
            if index == 0:
                p += 4
            else:
                rr = s[p : p + 10]
                if len(rr) < 10:
                    return None  # struct.error inside scapy: the whole DNS layer fails
                rdlen = struct.unpack("!H", rr[8:10])[0]
                p += 10 + rdlen
        positioned = index < 3
    if not positioned and counts[3] > len(s):
        p = 0
    return base + 12 + min(p, len(s))


def _skip_name(s: bytes, p: int) -> int:
    n = len(s)
    while p < n:
        length = s[p]
        if length == 0:
            return p + 1
        if length & 0xC0 == 0xC0:
            return p + 2
        p += 1 + length
    return p + 1


def _ipv4_payload_start(b: bytes) -> int | None:
    """Offset in the IPv4 packet ``b`` where scapy's Raw layer starts, or None when there is no Raw layer."""
    ihl = (b[0] & 15) * 4
    total = struct.unpack("!H", b[2:4])[0]
    frag = struct.unpack("!H", b[6:8])[0] & 0x1FFF
    proto = b[9]
    ip_payload = min(total, len(b)) - ihl
    if frag:
        return ihl if ip_payload > 0 else None
    if proto == 6:
        if len(b) < ihl + 20:
            return ihl if len(b) > ihl else None
        doff = (b[ihl + 12] >> 4) * 4
        sport, dport = struct.unpack("!HH", b[ihl : ihl + 4])
        data_len = total - ihl - doff
        if data_len <= 0:
            return None
        if sport in _DNS_PORTS[:1] or dport in _DNS_PORTS[:1]:
            off = _dns_raw_offset(b[ihl + doff : total], over_tcp=True)
            if off is not None:
                return ihl + doff + off if ihl + doff + off < len(b) else None
        return ihl + doff
    if proto == 17:
        if len(b) < ihl + 8:
            return ihl if len(b) > ihl else None
        sport, dport, ulen = struct.unpack("!HHH", b[ihl : ihl + 6])
        if min(total - ihl, ulen) - 8 <= 0:
            return None
        if sport in _UDP_NO_RAW or dport in _UDP_NO_RAW:
            return None
        if sport in _DNS_PORTS or dport in _DNS_PORTS:
            end = ihl + 8 + min(total - ihl, ulen) - 8
            off = _dns_raw_offset(b[ihl + 8 : end], over_tcp=False)
            if off is not None:
                start = ihl + 8 + off
                return start if start < end else None
        return ihl + 8
    if proto == 1:
        return ihl + 8 if ip_payload > 8 else None
    if proto == 4:
        inner = _ipv4_payload_start(b[ihl:])
        return None if inner is None else ihl + inner
    return ihl if ip_payload > 0 else None


def netmamba_slot(ipv4: bytes, remove_ip: bool = True, header_bytes: int = 80, payload_bytes: int = 240) -> bytes:
    """NetMamba's ``[header | payload]`` bytes for one packet, from its IPv4 header to the end of the frame."""
    b = bytearray(ipv4)
    if remove_ip:
        b[12:20] = bytes(len(b[12:20]))
    b = bytes(b)
    start = _ipv4_payload_start(b)
    full_hex = b.hex()
    if start is None or start >= len(b):
        payload_hex = ""
        header_hex = full_hex
    else:
        payload_hex = b[start:].hex()
        header_hex = full_hex.replace(payload_hex, "")
    hh, ph = header_bytes * 2, payload_bytes * 2
    header_hex = header_hex[:hh].ljust(hh, "0")
    payload_hex = payload_hex[:ph].ljust(ph, "0")
    return bytes.fromhex(header_hex + payload_hex)


def find_ipv4(frame: bytes, linktype: int) -> int | None:
    """Offset of the IPv4 header scapy would use in a frame (None when there is none)."""
    if linktype == 1:
        pos, etype = 14, frame[12:14]
        while etype in (b"\x81\x00", b"\x88\xa8", b"\x91\x00") and len(frame) >= pos + 4:
            etype = frame[pos + 2 : pos + 4]
            pos += 4
    elif linktype == 113:
        pos, etype = 16, frame[14:16]
    elif linktype == 276:
        pos, etype = 20, frame[0:2]
    elif linktype in (101, 12, 14):
        pos = 0
        etype = {4: b"\x08\x00", 6: b"\x86\xdd"}.get(frame[0] >> 4 if frame else 0, b"")
    elif linktype in (0, 108):
        fam = frame[0] | frame[1] if len(frame) >= 4 else 0
        fam = max(frame[:4]) if len(frame) >= 4 else 0
        pos = 4
        etype = b"\x08\x00" if fam == 2 else (b"\x86\xdd" if fam in (10, 24, 28, 30) else b"")
    else:
        return None
    if etype == b"\x08\x00":
        return pos if len(frame) >= pos + 20 else None
    if etype == b"\x86\xdd" and len(frame) >= pos + 60 and frame[pos + 6] == 4:
        return pos + 40  # IPv4 directly inside IPv6: scapy's IP layer is the inner one
    return None


def netmamba_file_array(
    source, remove_ip: bool = True, num_packets: int = 5, source_name: str | None = None
) -> np.ndarray:
    """NetMamba's 1600-byte array for a whole (already split) flow pcap: the first five records in file order.

    Records without an IPv4 layer (ARP, IPv6, ...) use up a slot and give zeros, as in NetMamba.
    """
    slots = []
    for chunk in CaptureReader(source, source_name=source_name, strict=True):
        for i in range(len(chunk)):
            if len(slots) == num_packets:
                break
            start = int(chunk.frame_offset[i])
            frame = chunk.data[start : start + int(chunk.caplen[i])].tobytes()
            pos = find_ipv4(frame, int(chunk.linktype[i]))
            slots.append(bytes(320) if pos is None else netmamba_slot(frame[pos:], remove_ip))
        if len(slots) == num_packets:
            break
    out = np.zeros(num_packets * 320, dtype=np.uint8)
    joined = b"".join(slots)
    out[: len(joined)] = np.frombuffer(joined, dtype=np.uint8)
    return out
