"""Vectorised dissection of a block of frames: link layer, VLAN tags, IPv4/IPv6 (with extension headers), TCP/UDP.

All fields of all frames of a ``RecordChunk`` are extracted with numpy fancy indexing; there is no per-packet Python.
Frames that cannot be part of a TCP/UDP flow get a skip reason code (index into ``SKIP_REASONS`` + 1).
"""

from dataclasses import dataclass

import numpy as np

from ..data_contract import (
    IPV4,
    IPV4_MIN_HEADER,
    IPV6,
    IPV6_HEADER,
    PROTOCOL_TCP,
    PROTOCOL_UDP,
    TCP,
    TCP_MIN_HEADER,
    UDP,
    UDP_HEADER,
)
from .core import SKIP_REASONS
from .pcapio import RecordChunk

OK = 0
R_NON_IP, R_FRAGMENT, R_TRUNCATED, R_MALFORMED, R_LINKTYPE, R_TRANSPORT, R_FILTERED, R_SHORT = range(1, 9)
assert SKIP_REASONS[R_SHORT - 1] == "short_flow"

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW_12, LINKTYPE_RAW_14 = 0, 1, 12, 14
LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_SLL, LINKTYPE_SLL2 = 101, 108, 113, 276
SUPPORTED_LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 276)
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
AF_INET6_VALUES = (10, 24, 28, 30)  # Linux, OpenBSD/NetBSD, FreeBSD, macOS
# hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6 (ESP = 50 ends the walk: encrypted)
IPV6_EXTENSION_HEADERS = (0, 43, 44, 51, 60, 135, 139, 140)

# UDP/TCP services that are infrastructure chatter rather than application traffic (NetMamba+ removes them too)
SERVICE_CHATTER_PORTS = (53, 67, 68, 123, 137, 138, 1900, 5353, 5355, 546, 547)

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class PacketBatch:
    """Per-frame fields of one chunk (arrays of equal length n; offsets index ``data``)."""

    data: np.ndarray  # uint8 block
    timestamp: np.ndarray  # float64
    reason: np.ndarray  # int8, 0 = usable TCP/UDP packet
    ip_version: np.ndarray  # int8, 4 / 6 / 0
    l3: np.ndarray  # int64 offset of the IP header
    l4: np.ndarray  # int64 offset of the TCP/UDP header
    payload_start: np.ndarray  # int64 offset of the transport payload
    ip_end: np.ndarray  # int64 end of the IP datagram according to its length field
    frame_end: np.ndarray  # int64 end of the captured frame
    ip_length: np.ndarray  # int64 IP total length (IPv6: 40 + payload length)
    payload_length: np.ndarray  # int64 transport payload length from the IP length fields
    protocol: np.ndarray  # int64 6 / 17
    src_port: np.ndarray  # int64
    dst_port: np.ndarray  # int64
    tcp_flags: np.ndarray  # int64 (0 for UDP)
    seq: np.ndarray  # int64
    ack: np.ndarray  # int64
    src_addr: np.ndarray  # uint8 [n, 16] (IPv4 in the first 4 bytes)
    dst_addr: np.ndarray  # uint8 [n, 16]

    def __len__(self) -> int:
        return len(self.timestamp)


def _any_equal(values: np.ndarray, choices: tuple) -> np.ndarray:
    """``np.isin`` for a handful of choices (isin's set-up cost dominates on small blocks)."""
    out = values == choices[0]
    for choice in choices[1:]:
        out |= values == choice
    return out


def _u8(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return data.take(pos, mode="clip").astype(np.int64)


def _u16(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (data.take(pos, mode="clip").astype(np.int64) << 8) | data.take(pos + 1, mode="clip")


def _u32(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (_u16(data, pos) << 16) | _u16(data, pos + 2)


def dissect(chunk: RecordChunk, drop_service_chatter: bool = False) -> PacketBatch:
    data = chunk.data
    n = len(chunk)
    start = chunk.frame_offset
    frame_end = start + chunk.caplen
    lt = chunk.linktype
    reason = np.zeros(n, dtype=np.int8)
    # classic pcap has one link type per file: skip the branches that cannot apply (numpy's fixed costs dominate
    # for the many small per-flow captures of public datasets)
    present = set(np.unique(lt).tolist()) if n else set()
    for code in present - set(SUPPORTED_LINKTYPES):
        reason[lt == code] = R_LINKTYPE

    # ---- link layer -> (ethertype-like code, l3 offset)
    ethertype = np.zeros(n, dtype=np.int64)
    l3 = start.copy()
    none = np.zeros(n, dtype=bool)
    is_eth = lt == LINKTYPE_ETHERNET if LINKTYPE_ETHERNET in present else none
    if LINKTYPE_ETHERNET in present:
        ethertype[is_eth] = _u16(data, start[is_eth] + 12)
        l3[is_eth] = start[is_eth] + 14
    is_sll = lt == LINKTYPE_SLL if LINKTYPE_SLL in present else none
    if LINKTYPE_SLL in present:
        ethertype[is_sll] = _u16(data, start[is_sll] + 14)
        l3[is_sll] = start[is_sll] + 16
    if LINKTYPE_SLL2 in present:
        is_sll2 = lt == LINKTYPE_SLL2
        ethertype[is_sll2] = _u16(data, start[is_sll2])
        l3[is_sll2] = start[is_sll2] + 20
    if present & {LINKTYPE_RAW, LINKTYPE_RAW_12, LINKTYPE_RAW_14}:
        is_raw = (lt == LINKTYPE_RAW) | (lt == LINKTYPE_RAW_12) | (lt == LINKTYPE_RAW_14)
        version_nibble = _u8(data, start[is_raw]) >> 4
        ethertype[is_raw] = np.where(version_nibble == 4, 0x0800, np.where(version_nibble == 6, 0x86DD, 0))
    if present & {LINKTYPE_NULL, LINKTYPE_LOOP}:
        is_null = (lt == LINKTYPE_NULL) | (lt == LINKTYPE_LOOP)
        fam_le = _u8(data, start[is_null]) | (_u8(data, start[is_null] + 1) << 8)
        fam_be = _u16(data, start[is_null] + 2)
        # NULL is in the capturing host's byte order, LOOP in network order; the family is < 256 either way
        family = np.where(fam_le != 0, fam_le, fam_be)
        is6 = _any_equal(family, AF_INET6_VALUES)
        ethertype[is_null] = np.where(family == 2, 0x0800, np.where(is6, 0x86DD, 0))
        l3[is_null] = start[is_null] + 4
    # VLAN / QinQ tags (Ethernet and SLL)
    for _ in range(3):
        tagged = _any_equal(ethertype, VLAN_ETHERTYPES) & (is_eth | is_sll)
        if not tagged.any():
            break
        ethertype[tagged] = _u16(data, l3[tagged] + 2)
        l3[tagged] += 4
    link_short = (l3 > frame_end) & (reason == OK)
    reason[link_short] = R_TRUNCATED
    is_v4 = (ethertype == 0x0800) & (reason == OK)
    is_v6 = (ethertype == 0x86DD) & (reason == OK)
    reason[(reason == OK) & ~is_v4 & ~is_v6] = R_NON_IP

    ip_version = np.zeros(n, dtype=np.int8)
    l4 = np.zeros(n, dtype=np.int64)
    ip_end = np.zeros(n, dtype=np.int64)
    ip_length = np.zeros(n, dtype=np.int64)
    protocol = np.zeros(n, dtype=np.int64)
    src_addr = np.zeros((n, 16), dtype=np.uint8)
    dst_addr = np.zeros((n, 16), dtype=np.uint8)

    # ---- IPv4
    idx = np.flatnonzero(is_v4)
    if len(idx):
        p = l3[idx]
        b0 = _u8(data, p + IPV4["version_ihl"].offset)
        ihl = (b0 & 15) * 4
        tot = _u16(data, p + IPV4["total_length"].offset)
        # total length 0: a segmentation-offload capture (TSO/GSO); the frame holds the whole datagram
        tot = np.where(tot == 0, frame_end[idx] - p, tot)
        frag = _u16(data, p + IPV4["flags_fragment"].offset)
        r = np.zeros(len(idx), dtype=np.int8)
        # non-first fragments carry no transport header; a first fragment (MF set, offset 0) is kept
        r[(frag & 0x1FFF) != 0] = R_FRAGMENT
        r[(b0 >> 4 != 4) | (ihl < IPV4_MIN_HEADER) | (tot < ihl)] = R_MALFORMED
        r[(r == OK) & (p + ihl > frame_end[idx])] = R_TRUNCATED
        reason[idx] = np.where(r != OK, r, reason[idx])
        ip_version[idx] = 4
        l4[idx] = p + ihl
        ip_end[idx] = p + tot
        ip_length[idx] = tot
        protocol[idx] = _u8(data, p + IPV4["protocol"].offset)
        cols = np.arange(IPV4["src"].length)
        src_addr[idx, :4] = data.take(p[:, None] + IPV4["src"].offset + cols, mode="clip")
        dst_addr[idx, :4] = data.take(p[:, None] + IPV4["dst"].offset + cols, mode="clip")

    # ---- IPv6 (+ extension headers)
    idx = np.flatnonzero(is_v6)
    if len(idx):
        p = l3[idx]
        r = np.zeros(len(idx), dtype=np.int8)
        r[(_u8(data, p) >> 4) != 6] = R_MALFORMED
        r[(r == OK) & (p + IPV6_HEADER > frame_end[idx])] = R_TRUNCATED
        plen = _u16(data, p + IPV6["payload_length"].offset)
        nh = _u8(data, p + IPV6["next_header"].offset)
        pos = p + IPV6_HEADER
        for _ in range(8):
            ext = (r == OK) & np.isin(nh, IPV6_EXTENSION_HEADERS)
            if not ext.any():
                break
            e = np.flatnonzero(ext)
            short = pos[e] + 8 > frame_end[idx[e]]
            r[e[short]] = R_TRUNCATED
            e = e[~short]
            code = nh[e]
            hlen = _u8(data, pos[e] + 1)
            size = np.where(code == 51, (hlen + 2) * 4, np.where(code == 44, 8, (hlen + 1) * 8))
            is_frag = code == 44
            if is_frag.any():
                fe = e[is_frag]
                fo = _u16(data, pos[fe] + 2)
                # as for IPv4: only non-first fragments (offset > 0) are skipped
                r[fe[(fo & 0xFFF8) != 0]] = R_FRAGMENT
            nh[e] = _u8(data, pos[e])
            pos[e] = pos[e] + size
        r[(r == OK) & (pos > p + IPV6_HEADER + plen)] = R_MALFORMED
        reason[idx] = np.where(r != OK, r, reason[idx])
        ip_version[idx] = 6
        l4[idx] = pos
        ip_end[idx] = p + IPV6_HEADER + plen
        ip_length[idx] = IPV6_HEADER + plen
        protocol[idx] = nh
        cols = np.arange(IPV6["src"].length)
        src_addr[idx] = data.take(p[:, None] + IPV6["src"].offset + cols, mode="clip")
        dst_addr[idx] = data.take(p[:, None] + IPV6["dst"].offset + cols, mode="clip")

    # ---- transport
    reason[(reason == OK) & (protocol != PROTOCOL_TCP) & (protocol != PROTOCOL_UDP)] = R_TRANSPORT
    src_port = np.zeros(n, dtype=np.int64)
    dst_port = np.zeros(n, dtype=np.int64)
    tcp_flags = np.zeros(n, dtype=np.int64)
    seq = np.zeros(n, dtype=np.int64)
    ack = np.zeros(n, dtype=np.int64)
    payload_start = np.zeros(n, dtype=np.int64)
    tcp = np.flatnonzero((reason == OK) & (protocol == PROTOCOL_TCP))
    if len(tcp):
        p = l4[tcp]
        r = np.zeros(len(tcp), dtype=np.int8)
        r[p + TCP_MIN_HEADER > frame_end[tcp]] = R_TRUNCATED
        doff = (_u8(data, p + TCP["data_offset"].offset) >> 4) * 4
        r[(r == OK) & ((doff < TCP_MIN_HEADER) | (p + doff > ip_end[tcp]))] = R_MALFORMED
        reason[tcp] = r
        src_port[tcp] = _u16(data, p + TCP["src_port"].offset)
        dst_port[tcp] = _u16(data, p + TCP["dst_port"].offset)
        seq[tcp] = _u32(data, p + TCP["seq"].offset)
        ack[tcp] = _u32(data, p + TCP["ack"].offset)
        tcp_flags[tcp] = _u8(data, p + TCP["flags"].offset)
        payload_start[tcp] = p + doff
    udp = np.flatnonzero((reason == OK) & (protocol == PROTOCOL_UDP))
    if len(udp):
        p = l4[udp]
        r = np.zeros(len(udp), dtype=np.int8)
        r[p + UDP_HEADER > frame_end[udp]] = R_TRUNCATED
        r[(r == OK) & (p + UDP_HEADER > ip_end[udp])] = R_MALFORMED
        reason[udp] = r
        src_port[udp] = _u16(data, p + UDP["src_port"].offset)
        dst_port[udp] = _u16(data, p + UDP["dst_port"].offset)
        payload_start[udp] = p + UDP_HEADER
    if drop_service_chatter:
        chatter = np.isin(src_port, SERVICE_CHATTER_PORTS) | np.isin(dst_port, SERVICE_CHATTER_PORTS)
        reason[(reason == OK) & chatter] = R_FILTERED
    payload_length = np.maximum(ip_end - payload_start, 0)
    return PacketBatch(
        data=data,
        timestamp=chunk.timestamp,
        reason=reason,
        ip_version=ip_version,
        l3=l3,
        l4=l4,
        payload_start=payload_start,
        ip_end=ip_end,
        frame_end=frame_end,
        ip_length=ip_length,
        payload_length=payload_length,
        protocol=protocol,
        src_port=src_port,
        dst_port=dst_port,
        tcp_flags=tcp_flags,
        seq=seq,
        ack=ack,
        src_addr=src_addr,
        dst_addr=dst_addr,
    )
