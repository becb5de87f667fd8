"""Torch-free pcap side of mmae-hf: read captures, assemble flows, anonymise, compute statistics.

Main entry point: ``iter_flows(path_or_bytes, FlowOptions(...), accounting=PacketAccounting())``.
"""

from .core import (
    ANONYMIZATION_PROFILES,
    FLOW_STAT_NAMES,
    NUM_FLOW_STATS,
    SKIP_REASONS,
    FlowOptions,
    FlowRecord,
    PacketAccounting,
    PcapFormatError,
)
from .flows import iter_flows
from .loading import DatasetLoadError, load_traffic_dataset
from .netmamba import netmamba_file_array

__all__ = [
    "ANONYMIZATION_PROFILES",
    "DatasetLoadError",
    "FLOW_STAT_NAMES",
    "NUM_FLOW_STATS",
    "SKIP_REASONS",
    "FlowOptions",
    "FlowRecord",
    "PacketAccounting",
    "PcapFormatError",
    "iter_flows",
    "load_traffic_dataset",
    "netmamba_file_array",
]
