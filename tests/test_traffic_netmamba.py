"""The ``netmamba`` profile reproduces NetMamba's arrays byte for byte (golden fixtures in shared/reference)."""

import csv
import hashlib
import struct

import numpy as np
import pytest
from traffic_pcaps import shared_dir

from mmae_hf.traffic import FlowOptions, iter_flows, netmamba_file_array
from mmae_hf.traffic.pcapio import CaptureReader

GOLDEN = shared_dir() / "reference" / "golden_netmamba"
DATA = shared_dir() / "data" / "ndpi-encrypted-services"
NO_TIMEOUTS = dict(anonymize="netmamba", idle_timeout=1e12, active_timeout=1e12, tcp_close=False)
# synthetic cases that are not one TCP/UDP flow, so only the per-file route can reproduce them:
# ARP / IPv6 records using up a slot, a non-first fragment, ICMP, IPv4-in-IPv6 and IP-in-IP tunnels
FILE_ONLY = {"s03", "s04", "s07", "s08", "s11", "s12"}


def sha(arr):
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.uint8).tobytes()).hexdigest()


def manifest():
    with open(GOLDEN / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def synthetic():
    with open(GOLDEN / "synthetic" / "synthetic_manifest.csv") as fh:
        return list(csv.DictReader(fh))


def direction_key(f):
    host = lambda a: f"[{a}]" if ":" in a else a  # noqa: E731
    return f"{host(f.src_ip)}:{f.src_port} > {host(f.dst_ip)}:{f.dst_port} {'TCP' if f.protocol == 6 else 'UDP'}"


def split_direction(path, key):
    """The records of one direction as a classic pcap (what NetMamba's splitter writes), in memory."""
    raw = path.read_bytes()
    endian = "<" if raw[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    out = [raw[:24]]
    for chunk in CaptureReader(path):
        for i in range(len(chunk)):
            s, n = int(chunk.file_offset[i]), int(chunk.caplen[i])
            rec = raw[s : s + 16 + n]
            flows = list(iter_flows(raw[:24] + rec, FlowOptions(bidirectional=False, **NO_TIMEOUTS), engine="reference"))
            if flows and direction_key(flows[0]) == key:
                out.append(rec)
    assert struct.unpack(endian + "I", raw[20:24])[0] == 1
    return b"".join(out)


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_flow_route_matches_every_remove_ip_fixture(engine):
    """Unidirectional flows (and whole files for BIDIR rows) with the netmamba profile."""
    rows = [r for r in manifest() if r["remove_ip"] == "True"]
    assert len(rows) == 115
    mismatches = []
    for r in rows:
        bidir = r["direction_key"] == "BIDIR"
        flows = list(iter_flows(DATA / r["input_file"], FlowOptions(bidirectional=bidir, **NO_TIMEOUTS), engine=engine))
        if not bidir:
            flows = [f for f in flows if direction_key(f) == r["direction_key"]]
        assert len(flows) == 1, r["output_file"]
        assert flows[0].packet_count == int(r["n_packets"]), r["output_file"]
        if sha(flows[0].payload) != r["sha256"]:
            mismatches.append(r["output_file"])
    assert mismatches == []


def test_file_route_matches_every_fixture():
    """All 145 rows, both remove_ip settings, by re-splitting the flow files per direction in memory."""
    mismatches = []
    for r in manifest():
        path = DATA / r["input_file"]
        source = path if r["direction_key"] == "BIDIR" else split_direction(path, r["direction_key"])
        arr = netmamba_file_array(source, remove_ip=r["remove_ip"] == "True")
        if sha(arr) != r["sha256"]:
            mismatches.append(r["output_file"])
        stored = np.load(GOLDEN / r["output_file"], allow_pickle=False)
        assert sha(stored) == r["sha256"]
    assert mismatches == []


def test_synthetic_fixtures():
    mismatches = []
    rows = synthetic()
    assert len(rows) == 34
    for r in rows:
        path = GOLDEN / "synthetic" / r["pcap"]
        rip = r["remove_ip"] == "True"
        if sha(netmamba_file_array(path, remove_ip=rip)) != r["sha256"]:
            mismatches.append(("file", r["output_file"]))
        if rip and r["pcap"][:3] not in FILE_ONLY:
            flows = list(iter_flows(path, FlowOptions(bidirectional=False, **NO_TIMEOUTS)))
            assert len(flows) == 1, r["pcap"]
            if sha(flows[0].payload) != r["sha256"]:
                mismatches.append(("flow", r["output_file"]))
    assert mismatches == []
