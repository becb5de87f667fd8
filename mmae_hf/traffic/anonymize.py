"""Per-packet slot building ([header | payload] bytes) and the anonymisation profiles.

A slot is built from the bytes of one packet starting at its IP header. Only the first ``num_packets`` packets of a
flow become slots, so this code runs on a small share of all packets and is written for clarity.
"""

import numpy as np

from ..data_contract import IPV4, IPV6, PROTOCOL_TCP, TCP, UDP, HeaderField

TCP_ACK = 0x10


class SequenceBase:
    """First TCP sequence / acknowledgement number per direction of a flow (``default`` and ``strict`` profiles)."""

    __slots__ = ("seq", "ack")

    def __init__(self):
        self.seq = {}
        self.ack = {}

    def relative(self, direction: int, seq: int, ack: int, flags: int) -> tuple[int, int]:
        base = self.seq.setdefault(direction, seq)
        rel_seq = (seq - base) & 0xFFFFFFFF
        if flags & TCP_ACK:
            abase = self.ack.setdefault(direction, ack)
            rel_ack = (ack - abase) & 0xFFFFFFFF
        else:
            rel_ack = 0
        return rel_seq, rel_ack


def build_slot(
    pkt: bytes,
    ip_version: int,
    l4: int,
    payload_start: int,
    ip_end: int,
    protocol: int,
    tcp_flags: int,
    direction: int,
    profile: str,
    header_bytes: int,
    payload_bytes: int,
    seq_base: SequenceBase | None = None,
) -> bytes:
    """Slot bytes for one TCP/UDP packet (``profile`` other than ``netmamba``).

    Args:
        pkt: the captured bytes from the first byte of the IP header to the end of the frame.
        l4, payload_start, ip_end: offsets into ``pkt`` of the transport header, the transport payload and the end of
            the IP datagram (by its length field). Bytes after ``ip_end`` (link-layer padding/trailers) are dropped.
    Header part = IP header (+ options / extension headers) + transport header (+ options), cut to ``header_bytes``.
    Payload part = transport payload as captured, cut to ``payload_bytes``. Both zero-padded.
    """
    header = bytearray(pkt[: min(payload_start, header_bytes)])
    payload = bytearray(pkt[payload_start : min(ip_end, len(pkt), payload_start + payload_bytes)])
    if profile in ("default", "strict"):
        _anonymise_header(header, ip_version, l4, protocol, tcp_flags, direction, seq_base)
        if profile == "strict" and payload:
            mask_cleartext_names(payload, protocol)
    out = bytes(header).ljust(header_bytes, b"\0") + bytes(payload).ljust(payload_bytes, b"\0")
    return out


def _zero(buf: bytearray, start: int, stop: int) -> None:
    stop = min(stop, len(buf))
    if start < stop:
        buf[start:stop] = bytes(stop - start)


def _zero_field(buf: bytearray, field: HeaderField, base: int = 0) -> None:
    _zero(buf, base + field.offset, base + field.end)


def _anonymise_header(header, ip_version, l4, protocol, tcp_flags, direction, seq_base):
    if ip_version == 4:
        for name in ("id", "checksum", "src", "dst"):
            _zero_field(header, IPV4[name])
    else:
        if len(header) > 1:
            header[1] &= 0xF0  # flow label: the low 4 bits of byte 1 and bytes 2-3 of version_class_flow
        _zero(header, 2, IPV6["version_class_flow"].end)
        _zero_field(header, IPV6["src"])
        _zero_field(header, IPV6["dst"])
    _zero(header, l4, l4 + TCP["dst_port"].end)  # ports (the same place in TCP and UDP)
    if protocol == PROTOCOL_TCP:
        _zero_field(header, TCP["checksum"], l4)
        seq_at, ack_at = l4 + TCP["seq"].offset, l4 + TCP["ack"].offset
        if len(header) >= l4 + TCP["ack"].end:
            seq = int.from_bytes(header[seq_at : seq_at + 4], "big")
            ack = int.from_bytes(header[ack_at : ack_at + 4], "big")
            base = seq_base if seq_base is not None else SequenceBase()
            rel_seq, rel_ack = base.relative(direction, seq, ack, tcp_flags)
            header[seq_at : seq_at + 4] = rel_seq.to_bytes(4, "big")
            header[ack_at : ack_at + 4] = rel_ack.to_bytes(4, "big")
        else:
            _zero(header, seq_at, l4 + TCP["ack"].end)
    else:
        _zero_field(header, UDP["checksum"], l4)


# ------------------------------------------------------------------ strict: cleartext names
_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")


def mask_cleartext_names(payload: bytearray, protocol: int) -> None:
    """Zero host names that travel in clear text: TLS SNI, HTTP Host, DNS names. Works on a (possibly cut) payload."""
    if len(payload) >= 6 and payload[0] == 0x16 and payload[1] == 0x03 and payload[5] == 0x01:
        _mask_tls_sni(payload)
    elif payload.startswith(_HTTP_METHODS):
        _mask_http_host(payload)
    elif len(payload) >= 12:
        _mask_dns_names(payload, 2 if protocol == 6 else 0)


def _mask_tls_sni(p: bytearray) -> None:
    # record header (5) + handshake header (4) + version (2) + random (32)
    pos = 5 + 4 + 2 + 32
    n = len(p)
    if pos >= n:
        return
    pos += 1 + p[pos]  # session id
    if pos + 2 > n:
        return
    pos += 2 + int.from_bytes(p[pos : pos + 2], "big")  # cipher suites
    if pos >= n:
        return
    pos += 1 + p[pos]  # compression methods
    if pos + 2 > n:
        return
    pos += 2  # extensions length
    while pos + 4 <= n:
        etype = int.from_bytes(p[pos : pos + 2], "big")
        elen = int.from_bytes(p[pos + 2 : pos + 4], "big")
        body = pos + 4
        if etype == 0:  # server_name: list length (2), then entries type (1) + length (2) + name
            q = body + 2
            end = min(body + elen, n)
            while q + 3 <= end:
                nlen = int.from_bytes(p[q + 1 : q + 3], "big")
                _zero(p, q + 3, q + 3 + nlen)
                q += 3 + nlen
            return
        pos = body + elen


def _mask_http_host(p: bytearray) -> None:
    lower = bytes(p).lower()
    start = 0
    while True:
        i = lower.find(b"\nhost:", start)
        if i < 0:
            return
        j = i + 6
        end = lower.find(b"\r\n", j)
        end = len(p) if end < 0 else end
        _zero(p, j, end)
        start = end


def _mask_dns_names(p: bytearray, offset: int) -> None:
    """Zero the label bytes of every name in a DNS message (length bytes and pointers are kept)."""
    n = len(p)
    h = offset
    if h + 12 > n:
        return
    counts = [int.from_bytes(p[h + 4 + 2 * i : h + 6 + 2 * i], "big") for i in range(4)]
    if counts[0] > 64 or sum(counts) > 256:  # not plausibly DNS
        return
    pos = h + 12
    for section, count in enumerate(counts):
        for _ in range(count):
            pos = _mask_name(p, pos)
            if pos < 0 or pos > n:
                return
            if section == 0:
                pos += 4
            else:
                if pos + 10 > n:
                    return
                rdlen = int.from_bytes(p[pos + 8 : pos + 10], "big")
                rtype = int.from_bytes(p[pos : pos + 2], "big")
                rdata = pos + 10
                if rtype in (2, 5, 12):  # NS, CNAME, PTR carry a name
                    _mask_name(p, rdata)
                pos = rdata + rdlen


def _mask_name(p: bytearray, pos: int) -> int:
    n = len(p)
    while pos < n:
        length = p[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            return -1
        _zero(p, pos + 1, pos + 1 + length)
        pos += 1 + length
    return -1


def slots_to_array(slots: list, num_packets: int, slot_bytes: int) -> np.ndarray:
    out = np.zeros(num_packets * slot_bytes, dtype=np.uint8)
    if slots:
        joined = b"".join(slots)
        out[: len(joined)] = np.frombuffer(joined, dtype=np.uint8)
    return out
