"""Anonymisation profiles: what each one removes, and that it is recorded in the options."""

import struct

import numpy as np
import pytest
from traffic_pcaps import ether, handshake, pcap_bytes, udp

from mmae_hf.traffic import ANONYMIZATION_PROFILES, FlowOptions, iter_flows

ENGINES = ("reference", "fast")


def one_flow(records, engine, **opts):
    flows = list(iter_flows(pcap_bytes([(t, ether(p)) for t, p in records]), FlowOptions(**opts), engine=engine))
    assert len(flows) == 1
    return flows[0]


def slots(flow, k=5):
    return flow.input_bytes.reshape(k, 320)


def client_hello(sni: bytes) -> bytes:
    name = b"\x00" + struct.pack("!H", len(sni)) + sni
    ext_sni = struct.pack("!HH", 0, len(name) + 2) + struct.pack("!H", len(name)) + name
    ext_other = struct.pack("!HH", 0x000B, 2) + b"\x01\x00"
    exts = ext_other + ext_sni
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_profiles_are_recorded_and_validated():
    assert ANONYMIZATION_PROFILES == ("none", "netmamba", "default", "strict")
    opts = FlowOptions(anonymize="strict", bidirectional=False)
    assert FlowOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ValueError, match="anonymize"):
        FlowOptions(anonymize="partial")
    with pytest.raises(ValueError, match="unknown FlowOptions"):
        FlowOptions.from_dict({"anonymise": "none"})


@pytest.mark.parametrize("engine", ENGINES)
def test_default_removes_addresses_ports_ids_checksums(engine):
    pk = handshake(client="198.51.100.77", server="203.0.113.9", cport=51515, sport=8443)
    f = one_flow(pk, engine)  # default profile
    raw = one_flow(pk, engine, anonymize="none")
    for k in range(5):
        s, r = slots(f)[k], slots(raw)[k]
        assert bytes(s[12:20]) == bytes(8) and bytes(r[12:20]) != bytes(8)  # addresses
        assert bytes(s[4:6]) == b"\0\0" and bytes(s[10:12]) == b"\0\0"  # IP ID and header checksum
        assert bytes(s[20:24]) == bytes(4)  # ports
        assert bytes(s[36:38]) == b"\0\0"  # TCP checksum
        assert s[8] == r[8] and s[33] == r[33]  # TTL and TCP flags kept
        assert np.array_equal(s[80:], r[80:])  # payload untouched
    blob = f.input_bytes.tobytes()
    for needle in (
        bytes([198, 51, 100, 77]),
        bytes([203, 0, 113, 9]),
        struct.pack("!H", 51515),
        struct.pack("!H", 8443),
    ):
        assert needle not in blob
    # sequence numbers relative to the first per direction: SYN 0, SYN-ACK 0, client ACK seq 1 / ack 0
    seq = [int.from_bytes(slots(f)[k][24:28].tobytes(), "big") for k in range(5)]
    ack = [int.from_bytes(slots(f)[k][28:32].tobytes(), "big") for k in range(5)]
    assert seq == [0, 0, 1, 1, 1] and ack == [0, 0, 0, 0, 0 + 5]


@pytest.mark.parametrize("engine", ENGINES)
def test_default_udp_and_ipv6(engine):
    pk = [(0.0, udp(src="2001:db8::aa", dst="2001:db8::bb", sport=3333, dport=4444, payload=b"q" * 30, v6=True, fl=0xABCDE)),
          (0.1, udp(src="2001:db8::bb", dst="2001:db8::aa", sport=4444, dport=3333, payload=b"r" * 20, v6=True))]  # fmt: skip
    f = one_flow(pk, engine)
    s = slots(f)[0]
    assert s[0] >> 4 == 6 and s[1] & 0x0F == 0 and bytes(s[2:4]) == b"\0\0"  # flow label
    assert bytes(s[8:40]) == bytes(32)  # addresses
    assert bytes(s[40:44]) == bytes(4) and bytes(s[46:48]) == b"\0\0"  # ports, checksum
    assert bytes(s[44:46]) == struct.pack("!H", 38)  # UDP length kept
    assert bytes(s[80:110]) == b"q" * 30


@pytest.mark.parametrize("engine", ENGINES)
def test_strict_masks_sni_http_host_and_dns_names(engine):
    hello = client_hello(b"secret.example.com")
    pk = handshake(data=(hello,), close="none")
    f = one_flow(pk, engine, anonymize="strict")
    d = one_flow(pk, engine, anonymize="default")
    assert b"secret.example.com" in d.input_bytes.tobytes()
    assert b"secret" not in f.input_bytes.tobytes() and b"example" not in f.input_bytes.tobytes()
    diff = np.flatnonzero(f.input_bytes != d.input_bytes)
    assert len(diff) == len(b"secret.example.com")  # only the name bytes were touched
    http = b"GET / HTTP/1.1\r\nHost: intranet.corp\r\nUser-Agent: x\r\n\r\n"
    f = one_flow(handshake(data=(http,), sport=80, close="none"), engine, anonymize="strict")
    blob = f.input_bytes.tobytes()
    assert b"intranet" not in blob and b"User-Agent: x" in blob and b"Host:" in blob
    from scapy.layers.dns import DNS, DNSQR

    query = bytes(DNS(id=7, qd=DNSQR(qname="private.host.lan")))
    f = one_flow([(0.0, udp(dport=53, payload=query))], engine, anonymize="strict")
    blob = f.input_bytes.tobytes()
    assert b"private" not in blob and b"host" not in blob
    assert bytes(slots(f)[0][80:82]) == b"\x00\x07"  # DNS id kept, only names masked


def test_netmamba_profile_keeps_what_netmamba_keeps():
    pk = handshake(client="198.51.100.77", server="203.0.113.9", cport=51515, sport=8443)
    f = one_flow(pk, "fast", anonymize="netmamba")
    raw = one_flow(pk, "fast", anonymize="none")
    for k in range(5):
        s, r = slots(f)[k], slots(raw)[k]
        assert bytes(s[12:20]) == bytes(8)
        assert bytes(s[:12]) == bytes(r[:12]) and bytes(s[20:40]) == bytes(r[20:40])  # ports, checksums, seq kept
