"""The ``netmamba`` profile reproduces NetMamba's arrays byte for byte.

Two sets of golden arrays:
- committed (``tests/data/netmamba_golden``): crafted captures for every extraction rule and flows cut from the
  sample traffic, with arrays made by the scapy reference in ``tests/netmamba_reference.py``
  (``tests/data/netmamba_golden/generate.py`` remakes them);
- ``shared_data``: the arrays NetMamba's own code made from the nDPI development set (``../shared``), which also
  check that the scapy reference is right.
"""

import csv
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from mmae_hf.traffic import FlowOptions, iter_flows, netmamba_file_array
from mmae_hf.traffic.pcapio import CaptureReader

COMMITTED = Path(__file__).resolve().parent / "data" / "netmamba_golden"
NO_TIMEOUTS = dict(anonymize="netmamba", idle_timeout=1e12, active_timeout=1e12, tcp_close=False)
# synthetic cases that are not one TCP/UDP flow, so only the per-file route can reproduce them:
# ARP / IPv6 records using up a slot, a non-first fragment, ICMP, IPv4-in-IPv6 and IP-in-IP tunnels
FILE_ONLY = {"s03", "s04", "s07", "s08", "s11", "s12"}


def sha(arr):
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.uint8).tobytes()).hexdigest()


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def golden(shared_dir):
    return shared_dir / "reference" / "golden_netmamba"


def ndpi(shared_dir):
    return shared_dir / "data" / "ndpi-encrypted-services"


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
            flows = list(
                iter_flows(raw[:24] + rec, FlowOptions(bidirectional=False, **NO_TIMEOUTS), engine="reference")
            )
            if flows and direction_key(flows[0]) == key:
                out.append(rec)
    assert struct.unpack(endian + "I", raw[20:24])[0] == 1
    return b"".join(out)


def flow_route_mismatches(rows, root, engine):
    """Outputs of ``rows`` whose array the flow route (``iter_flows``) does not reproduce."""
    mismatches = []
    for r in rows:
        bidir = r["direction_key"] == "BIDIR"
        flows = list(iter_flows(root / r["input"], FlowOptions(bidirectional=bidir, **NO_TIMEOUTS), engine=engine))
        if not bidir:
            flows = [f for f in flows if direction_key(f) == r["direction_key"]]
        assert len(flows) == 1, r["output"]
        assert flows[0].packet_count == int(r["n_packets"]), r["output"]
        if sha(flows[0].input_bytes) != r["sha256"]:
            mismatches.append(r["output"])
    return mismatches


# ------------------------------------------------------------------------ committed golden arrays


def committed_rows():
    return read_csv(COMMITTED / "manifest.csv")


def test_committed_golden_set_covers_the_rules():
    rows = committed_rows()
    arrays = np.load(COMMITTED / "golden.npz")
    assert len(rows) == 96 and set(arrays.files) == {r["output"] for r in rows}
    assert all(sha(arrays[r["output"]]) == r["sha256"] for r in rows)
    inputs = {r["input"] for r in rows}
    assert sum(i.startswith("crafted/") for i in inputs) == 25 and sum(i.startswith("flows/") for i in inputs) == 7
    directional = [r for r in rows if r["direction_key"] != "BIDIR"]
    assert len(directional) == 32 and any("[::1]" in r["direction_key"] for r in directional)
    zero = [r for r in rows if not arrays[r["output"]].any()]
    assert {r["input"] for r in zero} == {"flows/tls-chat-03.pcap"}  # IPv6 records give zero slots


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_flow_route_matches_the_committed_arrays(engine):
    rows = [r for r in committed_rows() if r["remove_ip"] == "True" and r["flow_route"] == "True"]
    assert len(rows) == 42
    assert flow_route_mismatches(rows, COMMITTED, engine) == []


def test_file_route_matches_the_committed_arrays():
    """Every row, both remove_ip settings; single directions re-split in memory from the flow files."""
    mismatches = []
    for r in committed_rows():
        path = COMMITTED / r["input"]
        source = path if r["direction_key"] == "BIDIR" else split_direction(path, r["direction_key"])
        if sha(netmamba_file_array(source, remove_ip=r["remove_ip"] == "True")) != r["sha256"]:
            mismatches.append(r["output"])
    assert mismatches == []


def test_committed_arrays_are_what_the_scapy_reference_makes(tmp_path):
    """The committed arrays are reproducible from their inputs with the reference (not hand-edited)."""
    from netmamba_reference import reference_array, split_by_direction

    rows = committed_rows()
    splits = {}
    for r in rows:
        path = COMMITTED / r["input"]
        if r["direction_key"] != "BIDIR":
            if r["input"] not in splits:
                splits[r["input"]] = split_by_direction(path, tmp_path / str(len(splits)))
            path = splits[r["input"]][r["direction_key"]]
        assert sha(reference_array(path, remove_ip=r["remove_ip"] == "True")) == r["sha256"], r["output"]


# ------------------------------------------------------------------------ NetMamba's own arrays (../shared)


@pytest.mark.shared_data
def test_scapy_reference_reproduces_netmambas_arrays(shared_dir, tmp_path):
    """The reference that made the committed arrays gives NetMamba's arrays on all 145 + 34 shared fixtures."""
    from netmamba_reference import reference_array, split_by_direction

    splits, mismatches = {}, []
    for r in read_csv(golden(shared_dir) / "manifest.csv"):
        path = ndpi(shared_dir) / r["input_file"]
        if r["direction_key"] != "BIDIR":
            if r["input_file"] not in splits:
                splits[r["input_file"]] = split_by_direction(path, tmp_path / str(len(splits)))
            path = splits[r["input_file"]][r["direction_key"]]
        if sha(reference_array(path, remove_ip=r["remove_ip"] == "True")) != r["sha256"]:
            mismatches.append(r["output_file"])
    for r in read_csv(golden(shared_dir) / "synthetic" / "synthetic_manifest.csv"):
        path = golden(shared_dir) / "synthetic" / r["pcap"]
        if sha(reference_array(path, remove_ip=r["remove_ip"] == "True")) != r["sha256"]:
            mismatches.append(r["output_file"])
    assert mismatches == []


@pytest.mark.shared_data
@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_flow_route_matches_every_remove_ip_fixture(engine, shared_dir):
    """Unidirectional flows (and whole files for BIDIR rows) with the netmamba profile."""
    rows = [
        {**r, "input": r["input_file"], "output": r["output_file"]}
        for r in read_csv(golden(shared_dir) / "manifest.csv")
        if r["remove_ip"] == "True"
    ]
    assert len(rows) == 115
    assert flow_route_mismatches(rows, ndpi(shared_dir), engine) == []


@pytest.mark.shared_data
def test_file_route_matches_every_fixture(shared_dir):
    """All 145 rows, both remove_ip settings, by re-splitting the flow files per direction in memory."""
    mismatches = []
    for r in read_csv(golden(shared_dir) / "manifest.csv"):
        path = ndpi(shared_dir) / r["input_file"]
        source = path if r["direction_key"] == "BIDIR" else split_direction(path, r["direction_key"])
        arr = netmamba_file_array(source, remove_ip=r["remove_ip"] == "True")
        if sha(arr) != r["sha256"]:
            mismatches.append(r["output_file"])
        stored = np.load(golden(shared_dir) / r["output_file"], allow_pickle=False)
        assert sha(stored) == r["sha256"]
    assert mismatches == []


@pytest.mark.shared_data
def test_synthetic_fixtures(shared_dir):
    mismatches = []
    rows = read_csv(golden(shared_dir) / "synthetic" / "synthetic_manifest.csv")
    assert len(rows) == 34
    for r in rows:
        path = golden(shared_dir) / "synthetic" / r["pcap"]
        rip = r["remove_ip"] == "True"
        if sha(netmamba_file_array(path, remove_ip=rip)) != r["sha256"]:
            mismatches.append(("file", r["output_file"]))
        if rip and r["pcap"][:3] not in FILE_ONLY:
            flows = list(iter_flows(path, FlowOptions(bidirectional=False, **NO_TIMEOUTS)))
            assert len(flows) == 1, r["pcap"]
            if sha(flows[0].input_bytes) != r["sha256"]:
                mismatches.append(("flow", r["output_file"]))
    assert mismatches == []
