"""Public value types of the pcap side: options, flow records, accounting, errors, stat names.

Everything here is torch-free (numpy only) so that dataset building runs on any machine.
"""

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data_contract import BYTE_COLUMN
from ..data_contract import FLOW_STAT_NAMES as FLOW_STAT_NAMES  # re-exported
from ..data_contract import NUM_FLOW_STATS as NUM_FLOW_STATS  # re-exported


ANONYMIZATION_PROFILES = ("none", "netmamba", "default", "strict")
"""Names accepted by ``FlowOptions.anonymize``.

- ``none``: bytes as captured (after the link layer).
- ``netmamba``: NetMamba's original extraction, bit for bit: IPv4 addresses zeroed and nothing else,
  header part found by NetMamba's hex string-replace, non-IPv4 packets give zero slots, link-layer
  trailers kept. Use it with ``bidirectional=False`` to reproduce NetMamba / MMAE arrays.
- ``default``: IP addresses, ports, IPv4 identification, IPv4 header checksum and TCP/UDP checksum zeroed;
  TCP sequence and acknowledgement numbers made relative to the first value seen in that direction of the flow
  (acknowledgement zeroed where the ACK flag is clear); IPv6 flow label zeroed.
- ``strict``: ``default`` plus cleartext names masked with zeros: the TLS ClientHello SNI host name,
  the HTTP ``Host:`` header value, DNS/mDNS/LLMNR query and answer names. (QUIC Initial packets are
  encrypted with keys derived from public values; they are not decrypted, so their SNI stays as captured.)
"""

SKIP_REASONS = (
    "non_ip",  # link layer carries no IPv4/IPv6 (ARP, LLDP, ...)
    "ip_fragment",  # non-first IPv4/IPv6 fragment (no transport header); fragments are not reassembled
    "truncated_frame",  # captured bytes end before the IP or TCP/UDP header does
    "malformed",  # impossible header values (IPv4 IHL < 5, total length < header, TCP data offset < 5, ...)
    "unsupported_linktype",  # link type other than Ethernet, Linux SLL/SLL2, raw IP, BSD loopback
    "unsupported_transport",  # IP payload is not TCP or UDP (ICMP, ESP, GRE, IP-in-IP, ...)
    "filtered",  # dropped on purpose (``drop_service_chatter``: DNS, mDNS, LLMNR, NetBIOS, DHCP, NTP, SSDP)
    "short_flow",  # belonged to a flow with fewer than ``min_packets`` packets
    "over_packet_cap",  # came after the first ``max_packets`` packets of its flow
)


class PcapFormatError(ValueError):
    """A capture file is not a valid pcap/pcapng file or is damaged; the message names the file and byte offset."""

    def __init__(self, source: str, offset: int | None, problem: str):
        self.source = source
        self.offset = offset
        self.problem = problem
        super().__init__(f"{source}: {problem}" + ("" if offset is None else f" at byte offset {offset}"))


@dataclass
class FlowOptions:
    """How packets are grouped into flows and turned into the MMAE byte layout.

    Args:
        bidirectional: one flow per connection (canonical 5-tuple; the initiator is the sender of the first packet).
            ``False`` keys flows on the 5-tuple as seen, so each direction is its own flow (NetMamba's splitter).
        idle_timeout: a flow ends when the capture clock (largest timestamp read so far) passes its last packet by
            more than this many seconds. A packet more than ``idle_timeout`` seconds *before* the clock (time going
            backwards: merged captures, a clock step, a multi-interface pcapng) ends every open flow and restarts
            the clock at that packet (counted as ``time_jumps_back``), so merged captures give the flows of their
            parts instead of one flow per packet.
        active_timeout: a flow ends when the capture clock passes its first packet by more than this many seconds;
            the next packet of the same 5-tuple starts a new flow.
        tcp_close: a TCP flow is closed by an RST from either side, or once a FIN was seen from both sides. Packets
            of the same 5-tuple that follow the close still join the closed flow (final ACKs, retransmissions) until
            a fresh SYN (SYN set, ACK clear) arrives, which starts a new flow, or the idle timeout ends it.
            In unidirectional mode a FIN (or RST) closes the flow.
        num_packets: how many leading packets of a flow are stored as bytes (MMAE: 5).
        header_bytes: bytes per packet for the IP + transport header part (MMAE: 80).
        payload_bytes: bytes per packet for the transport payload part (MMAE: 240).
        anonymize: one of ``ANONYMIZATION_PROFILES``.
        min_packets: flows with fewer packets are dropped (their packets are counted as ``short_flow``).
        drop_service_chatter: drop DNS, mDNS, LLMNR, NetBIOS, DHCP, NTP and SSDP packets (counted as ``filtered``).
        max_packets: keep only the first ``max_packets`` packets of each flow (0: no cap; the ``-l N`` of the paper
            pipeline's splitter, used for ISCX-Tor). Later packets are dropped and counted as ``over_packet_cap``;
            the flow's ``packet_count``, ``byte_count``, ``end_time``, per-packet arrays and the 27 statistics
            describe the kept packets only. Dropped packets still belong to their flow: they do not start a new
            flow, they keep it alive for ``idle_timeout`` and their FIN/RST close it, so flow boundaries are the
            same as without the cap. Must be 0 or >= ``min_packets``.
        max_open_flows: at most this many flows are kept open (memory bound: a port scan or a crafted capture opens
            one flow per packet). At the end of each read block (4 MiB of capture) the flows over the cap whose last
            packet is oldest are ended as they are (counted as ``flows_evicted_by_cap``); a later packet of such a
            flow starts a new flow. So open flows never exceed this number plus the new flows of one block.
            0: no cap (memory then grows with the number of concurrent flows).
    """

    bidirectional: bool = True
    idle_timeout: float = 120.0
    active_timeout: float = 3600.0
    tcp_close: bool = True
    num_packets: int = 5
    header_bytes: int = 80
    payload_bytes: int = 240
    anonymize: str = "default"
    min_packets: int = 1
    drop_service_chatter: bool = False
    max_packets: int = 0
    max_open_flows: int = 100_000

    def __post_init__(self):
        if self.anonymize not in ANONYMIZATION_PROFILES:
            raise ValueError(f"anonymize={self.anonymize!r} is not one of {ANONYMIZATION_PROFILES}")
        if self.num_packets < 1 or self.header_bytes < 0 or self.payload_bytes < 0:
            raise ValueError("num_packets must be >= 1 and header_bytes/payload_bytes >= 0")
        if self.idle_timeout <= 0 or self.active_timeout <= 0:
            raise ValueError("idle_timeout and active_timeout must be positive")
        if self.min_packets < 1:
            raise ValueError("min_packets must be >= 1")
        if (
            isinstance(self.max_packets, bool)
            or not isinstance(self.max_packets, (int, np.integer))
            or self.max_packets < 0
        ):
            raise ValueError(f"max_packets must be an integer >= 0 (0 = no cap), got {self.max_packets!r}")
        self.max_packets = int(self.max_packets)
        if (
            isinstance(self.max_open_flows, bool)
            or not isinstance(self.max_open_flows, (int, np.integer))
            or self.max_open_flows < 0
        ):
            raise ValueError(f"max_open_flows must be an integer >= 0 (0 = no cap), got {self.max_open_flows!r}")
        self.max_open_flows = int(self.max_open_flows)
        if self.max_packets and self.max_packets < self.min_packets:
            raise ValueError(
                f"max_packets={self.max_packets} is below min_packets={self.min_packets}: every flow would be dropped"
            )

    @property
    def slot_bytes(self) -> int:
        return self.header_bytes + self.payload_bytes

    @property
    def num_bytes(self) -> int:
        return self.num_packets * self.slot_bytes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FlowOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown FlowOptions fields: {sorted(unknown)}")
        return cls(**values)


@dataclass
class PacketAccounting:
    """Where every packet read went: into a flow, or skipped under a named reason (see ``SKIP_REASONS``).

    ``packets_read == packets_in_flows + sum(skipped.values())`` once a capture has been read completely.
    ``errors`` holds one message per damaged file (file name and byte offset) in non-strict mode.
    ``flows_evicted_by_cap`` counts flows ended early because ``FlowOptions.max_open_flows`` flows were open;
    ``time_jumps_back`` counts the times the capture time went back by more than the idle timeout (every open flow
    ended there and the clock restarted). Both are 0 for an ordinary capture.
    """

    packets_read: int = 0
    packets_in_flows: int = 0
    flows: int = 0
    skipped: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    flows_evicted_by_cap: int = 0
    time_jumps_back: int = 0

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + int(count)

    @property
    def packets_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: "PacketAccounting") -> "PacketAccounting":
        self.packets_read += other.packets_read
        self.packets_in_flows += other.packets_in_flows
        self.flows += other.flows
        self.flows_evicted_by_cap += other.flows_evicted_by_cap
        self.time_jumps_back += other.time_jumps_back
        for reason, count in other.skipped.items():
            self.skip(reason, count)
        self.errors.extend(other.errors)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "packets_read": self.packets_read,
            "packets_in_flows": self.packets_in_flows,
            "flows": self.flows,
            "skipped": dict(sorted(self.skipped.items())),
            "errors": list(self.errors),
            "flows_evicted_by_cap": self.flows_evicted_by_cap,
            "time_jumps_back": self.time_jumps_back,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PacketAccounting":
        return cls(
            packets_read=values.get("packets_read", 0),
            packets_in_flows=values.get("packets_in_flows", 0),
            flows=values.get("flows", 0),
            skipped=dict(values.get("skipped", {})),
            errors=list(values.get("errors", [])),
            flows_evicted_by_cap=values.get("flows_evicted_by_cap", 0),
            time_jumps_back=values.get("time_jumps_back", 0),
        )


@dataclass
class FlowRecord:
    """One flow: the model's byte layout, per-packet side channels and raw flow statistics.

    Shapes for the default options (5 packets, 80 + 240 bytes):
        input_bytes: uint8 [1600], packets in order, each ``[header 80 | payload 240]``, anonymised, zero-padded
            (``payload`` is a deprecated alias).
        packet_lengths: int32 [5], IP total length (IPv6: 40 + payload length), 0 where absent.
        packet_iats: float32 [5], seconds since the previous packet of the flow (first = 0), 0 where absent.
        packet_directions: int8 [5], +1 initiator -> responder, -1 back, 0 absent.
        flow_stats: float32 [27], raw statistics named by ``FLOW_STAT_NAMES``.
    ``src_*`` is the initiator (the sender of the first packet), ``dst_*`` the responder.
    """

    input_bytes: np.ndarray
    packet_lengths: np.ndarray
    packet_iats: np.ndarray
    packet_directions: np.ndarray
    flow_stats: np.ndarray
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    start_time: float
    end_time: float
    packet_count: int
    byte_count: int
    source_file: str = ""

    def to_row(self, keep_addresses: bool = False) -> dict[str, Any]:
        """The data-contract row (see docs/INTERFACES.md); without ``label`` and ``group``, which the builder adds."""
        row = {
            BYTE_COLUMN: self.input_bytes,
            "packet_lengths": self.packet_lengths,
            "packet_iats": self.packet_iats,
            "packet_directions": self.packet_directions,
            "flow_stats": self.flow_stats,
            "source_file": self.source_file,
            "start_time": float(self.start_time),
            "end_time": float(self.end_time),
            "packet_count": int(self.packet_count),
            "byte_count": int(self.byte_count),
            "protocol": int(self.protocol),
        }
        if keep_addresses:
            row.update(src_ip=self.src_ip, dst_ip=self.dst_ip, src_port=int(self.src_port), dst_port=int(self.dst_port))
        return row

    @property
    def payload(self) -> np.ndarray:
        """Deprecated alias of `input_bytes` (the byte column's old name)."""
        warnings.warn("FlowRecord.payload is deprecated; use FlowRecord.input_bytes", DeprecationWarning, stacklevel=2)
        return self.input_bytes
