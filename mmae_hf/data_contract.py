# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The data contract: what one flow looks like everywhere, from the pcap reader to the model.

One row of a flow dataset is one flow. Its byte column is the model's input under the same name (`input_bytes`),
so rows, batches and `model(**inputs)` share one vocabulary. Every layer reads the names, dtypes, shapes, capture
formats and header-field offsets from here: the pcap side (`mmae_hf.traffic`: dissection, anonymisation, dataset
building and card), the feature extractor, the collators, the pipeline and the explanations.

This module is the bottom layer of the package: it imports nothing (standard library only), so the torch-free
`mmae_hf.traffic` and the remote-code files saved beside a model (`feature_extraction_mmae.py`,
`pipeline_traffic.py`, which may import single-dot siblings only) can all use it. Dtypes are given as names that
numpy (`np.dtype(name)`), torch (`getattr(torch, name)`) and datasets (`Value(name)`) all understand.

Byte layout of `input_bytes` (defaults): `NUM_PACKETS` packets in order, each a slot of `HEADER_BYTES` bytes from the
IP header on (IP + transport headers, cut / zero-padded) followed by `PAYLOAD_BYTES` bytes of transport payload (cut /
zero-padded). The header part's fields are named by `IPV4_FIELDS`, `IPV6_FIELDS`, `TCP_FIELDS` and `UDP_FIELDS`.
"""

import json
from typing import Any, NamedTuple


# ---------------------------------------------------------------------------------------------------- columns
BYTE_COLUMN = "input_bytes"
"""The flow's bytes: dataset column, `FlowRecord` attribute, batch key and model argument."""

LEGACY_COLUMN_NAMES = {"payload": BYTE_COLUMN}
"""Old column name -> contract name. Datasets built before the byte column was renamed get it renamed on load
(`mmae_hf.traffic.load_traffic_dataset`); dict inputs with the old key are still accepted."""

NUM_PACKETS = 5
HEADER_BYTES = 80
PAYLOAD_BYTES = 240

DEFAULT_FLOW_OPTIONS: dict[str, Any] = {
    "bidirectional": True,
    "idle_timeout": 120.0,
    "active_timeout": 3600.0,
    "tcp_close": True,
    "num_packets": NUM_PACKETS,
    "header_bytes": HEADER_BYTES,
    "payload_bytes": PAYLOAD_BYTES,
    "anonymize": "default",
    "min_packets": 1,
    "drop_service_chatter": False,
    "max_packets": 0,
    "max_open_flows": 100_000,
}
"""How flows are cut by default: the defaults of `mmae_hf.traffic.FlowOptions` (which documents each option; a test
checks that both agree), also what `MMAEFeatureExtractor` assumes for a key its saved config lacks."""

FLOW_STAT_NAMES = (
    # IP total length (IPv6: 40 + payload length) of every packet of the flow
    "packet_count",
    "byte_count",
    "length_mean",
    "length_std",
    "length_min",
    "length_max",
    "fwd_length_mean",
    "bwd_length_mean",
    "bwd_length_max",
    # timing (seconds); IATs between consecutive packets of the flow in capture order, negative gaps clipped to 0
    "duration",
    "iat_mean",
    "iat_std",
    "iat_min",
    "iat_max",
    "fwd_iat_mean",
    # transport payload bytes (TCP/UDP payload length from the IP length fields)
    "payload_mean",
    "payload_max",
    "zero_payload_fraction",
    # rates (0 when the flow lasts 0 s)
    "packets_per_second",
    "bytes_per_second",
    # TCP flag counts (0 for UDP)
    "syn_count",
    "fin_count",
    "rst_count",
    "psh_count",
    # bidirectional shape (unidirectional mode: 1, 1, 0)
    "fwd_packet_fraction",
    "fwd_byte_fraction",
    "direction_changes",
)
"""The 27 raw per-flow statistics of the `flow_stats` column, in order (definitions: `mmae_hf.traffic.card`).

They follow the proposal of method.md §2.2 in its bidirectional variant, restricted to quantities that can be
accumulated in O(1) memory per flow over the whole flow: the medians and quartiles of the proposal are replaced by
``fwd_length_mean``, ``bwd_length_mean``, ``bwd_length_max`` and ``fwd_iat_mean``; ``n_pure_ACK``, ``is_TCP`` and
``n_distinct_lengths`` are replaced by the three direction statistics (``protocol`` is its own column).
Values are raw (no log, no scaling); standard deviations are population standard deviations; statistics of an empty
set (e.g. IATs of a one-packet flow, backward lengths of a flow with no reply) are 0. Identifier-like fields (addresses,
ports, TTL, window) are deliberately absent.
"""
NUM_FLOW_STATS = len(FLOW_STAT_NAMES)

FLOW_ARRAY_COLUMNS = {
    BYTE_COLUMN: "uint8",
    "packet_lengths": "int32",
    "packet_iats": "float32",
    "packet_directions": "int8",
    "flow_stats": "float32",
}
"""Fixed-length array columns and their dtypes; also the model inputs (raw values; all scaling happens in the model).
Widths: `column_widths`."""

MODEL_INPUT_NAMES = tuple(FLOW_ARRAY_COLUMNS)

FLOW_SCALAR_COLUMNS = {
    "start_time": "float64",
    "end_time": "float64",
    "packet_count": "int64",
    "byte_count": "int64",
    "protocol": "int8",
}
"""Per-flow scalar columns and their dtypes."""

ADDRESS_COLUMNS = {"src_ip": "string", "dst_ip": "string", "src_port": "int32", "dst_port": "int32"}
"""Written only when the dataset builder is asked to keep addresses."""

COLUMN_DESCRIPTIONS = {
    BYTE_COLUMN: "first packets x (header bytes from the IP header on + transport-payload bytes), anonymised, "
    "zero-padded",
    "packet_lengths": "IP total length (IPv6: 40 + payload length) of each of the first packets, 0 where absent",
    "packet_iats": "seconds since the previous packet of the flow (first = 0), 0 where absent",
    "packet_directions": "+1 initiator to responder, -1 back, 0 absent",
    "flow_stats": "raw per-flow statistics, in the order of the flow statistics table",
    "label": "the class (ClassLabel)",
    "source_file": "capture the flow came from (path relative to the input root)",
    "group": "split group (source file by default, or the manifest's group)",
    "start_time": "epoch seconds of the first packet",
    "end_time": "epoch seconds of the last packet",
    "packet_count": "packets in the whole flow",
    "byte_count": "sum of IP lengths over the whole flow",
    "protocol": "6 TCP, 17 UDP",
}

FLOW_METADATA_FIELDS = (
    "source_file",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "protocol",
    "start_time",
    "end_time",
    "packet_count",
    "byte_count",
)
"""Per-flow metadata a prediction carries (pipeline and `mmae-classify` output), in this order."""


def column_widths(
    num_packets: int = NUM_PACKETS, header_bytes: int = HEADER_BYTES, payload_bytes: int = PAYLOAD_BYTES
) -> dict[str, int]:
    """Values per row of each `FLOW_ARRAY_COLUMNS` column for a byte layout."""
    return {
        BYTE_COLUMN: num_packets * (header_bytes + payload_bytes),
        "packet_lengths": num_packets,
        "packet_iats": num_packets,
        "packet_directions": num_packets,
        "flow_stats": NUM_FLOW_STATS,
    }


def contract_name(name: str) -> str:
    """The contract's name for a column or key (old names mapped, others unchanged)."""
    return LEGACY_COLUMN_NAMES.get(name, name)


def legacy_columns(column_names) -> dict[str, str]:
    """`{old: new}` for the legacy columns among `column_names` whose new name is not present too."""
    present = set(column_names)
    return {old: new for old, new in LEGACY_COLUMN_NAMES.items() if old in present and new not in present}


PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
"""The `MMAEFeatureExtractor` file: the flow options a dataset was built with, saved beside the data and the model."""


def preprocessor_config_json(flow_options: dict) -> str:
    """The text of `PREPROCESSOR_CONFIG_NAME` for these flow options, exactly as `MMAEFeatureExtractor.save_pretrained`
    writes it (the dataset builder writes it without transformers)."""
    config = {
        "feature_extractor_type": "MMAEFeatureExtractor",
        "flow_options": dict(flow_options),
        "model_input_names": list(MODEL_INPUT_NAMES),
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


# ----------------------------------------------------------------------------------------------- captures
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
"""File suffixes read as captures when a folder is walked."""

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
"""Classic pcap magic numbers -> (byte order, timestamp tick in seconds): micro- and nanosecond, both byte orders."""

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
"""Block type of the pcapng section header block (the first four bytes of a pcapng file)."""

CAPTURE_MAGICS = (*PCAP_MAGICS, PCAPNG_MAGIC)


def is_capture_bytes(data) -> bool:
    """True when `data` (bytes-like) starts with a pcap or pcapng magic number."""
    return bytes(data[:4]) in CAPTURE_MAGICS


# ------------------------------------------------------------------------------------------ header fields
class HeaderField(NamedTuple):
    """A header field: `offset` and `length` in bytes from the start of its header, and its dotted name."""

    offset: int
    length: int
    name: str

    @property
    def end(self) -> int:
        return self.offset + self.length


def _contiguous(prefix: str, *fields: tuple[str, int]) -> tuple[HeaderField, ...]:
    """A header's fields from `(name, length)` pairs in wire order: each starts where the previous one ends."""
    offsets = [0]
    for _, length in fields:
        offsets.append(offsets[-1] + length)
    return tuple(HeaderField(at, length, f"{prefix}.{name}") for at, (name, length) in zip(offsets, fields))


IPV4_FIELDS = _contiguous(
    "ip", ("version_ihl", 1), ("tos", 1), ("total_length", 2), ("id", 2), ("flags_fragment", 2), ("ttl", 1),
    ("protocol", 1), ("checksum", 2), ("src", 4), ("dst", 4),
)  # fmt: skip
IPV6_FIELDS = _contiguous(
    "ip6", ("version_class_flow", 4), ("payload_length", 2), ("next_header", 1), ("hop_limit", 1), ("src", 16),
    ("dst", 16),
)  # fmt: skip
TCP_FIELDS = _contiguous(
    "tcp", ("src_port", 2), ("dst_port", 2), ("seq", 4), ("ack", 4), ("data_offset", 1), ("flags", 1), ("window", 2),
    ("checksum", 2), ("urgent", 2),
)  # fmt: skip
UDP_FIELDS = _contiguous("udp", ("src_port", 2), ("dst_port", 2), ("length", 2), ("checksum", 2))
IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
TCP_MIN_HEADER = 20
UDP_HEADER = 8
PROTOCOL_TCP = 6
PROTOCOL_UDP = 17


def _by_short_name(fields) -> dict[str, HeaderField]:
    return {field.name.split(".", 1)[1]: field for field in fields}


IPV4 = _by_short_name(IPV4_FIELDS)
"""IPv4 fields by short name: `IPV4["total_length"].offset == 2`."""
IPV6 = _by_short_name(IPV6_FIELDS)
TCP = _by_short_name(TCP_FIELDS)
UDP = _by_short_name(UDP_FIELDS)

ADDRESS_FIELDS = ("ip.src", "ip.dst", "ip6.src", "ip6.dst")
PORT_FIELDS = ("tcp.src_port", "tcp.dst_port", "udp.src_port", "udp.dst_port")


__all__ = [
    "ADDRESS_COLUMNS",
    "ADDRESS_FIELDS",
    "BYTE_COLUMN",
    "CAPTURE_MAGICS",
    "CAPTURE_SUFFIXES",
    "COLUMN_DESCRIPTIONS",
    "DEFAULT_FLOW_OPTIONS",
    "FLOW_ARRAY_COLUMNS",
    "FLOW_METADATA_FIELDS",
    "FLOW_SCALAR_COLUMNS",
    "FLOW_STAT_NAMES",
    "HEADER_BYTES",
    "IPV4",
    "IPV4_FIELDS",
    "IPV6",
    "IPV6_FIELDS",
    "LEGACY_COLUMN_NAMES",
    "MODEL_INPUT_NAMES",
    "NUM_FLOW_STATS",
    "NUM_PACKETS",
    "PAYLOAD_BYTES",
    "PCAPNG_MAGIC",
    "PCAP_MAGICS",
    "PORT_FIELDS",
    "PREPROCESSOR_CONFIG_NAME",
    "TCP",
    "TCP_FIELDS",
    "UDP",
    "UDP_FIELDS",
    "HeaderField",
    "column_widths",
    "contract_name",
    "is_capture_bytes",
    "legacy_columns",
    "preprocessor_config_json",
]
