"""Byte attributions (integrated gradients), header-field labels and occlusion masks."""

import json

import numpy as np
import pytest
import torch

from mmae_hf import MMAEConfig, MMAEForSequenceClassification
from mmae_hf.explain import (
    attention_rollout,
    field_map,
    header_fields,
    integrated_gradients,
    occlude,
    occlusion_masks,
    shortcut_report,
    write_explanation,
)
from mmae_hf.pipeline_traffic import predict_logits


def slot_of(packet) -> np.ndarray:
    """The 320-byte MMAE slot of a scapy IP packet: IP + transport header (zero-padded to 80) | payload (240)."""
    from scapy.all import Raw

    raw = bytes(packet)
    payload = bytes(packet[Raw].load) if packet.haslayer(Raw) else b""
    header = raw[: len(raw) - len(payload)]
    slot = np.zeros(320, np.uint8)
    slot[: min(80, len(header))] = np.frombuffer(header[:80], np.uint8)
    slot[80 : 80 + min(240, len(payload))] = np.frombuffer(payload[:240], np.uint8)
    return slot


def spans(segments):
    return {name: (start, end) for start, end, name in segments}


def test_ipv4_tcp_fields_follow_the_header_lengths():
    from scapy.all import IP, TCP, Raw

    packet = (
        IP(src="10.1.2.3", dst="10.4.5.6", options=b"\x01\x01\x01\x01")
        / TCP(sport=1234, dport=443, options=[("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b"")])
        / Raw(b"x" * 50)
    )
    fields = spans(header_fields(slot_of(packet)))
    assert fields["ip.src"] == (12, 16) and fields["ip.dst"] == (16, 20)
    assert fields["ip.options"] == (20, 24)  # IHL 6
    assert fields["tcp.src_port"] == (24, 26) and fields["tcp.dst_port"] == (26, 28)
    assert fields["tcp.flags"] == (37, 38)
    assert fields["tcp.options"] == (44, 52)  # data offset 7 words
    assert fields["header.padding"] == (52, 80)
    assert fields["payload"] == (80, 130) and fields["payload.padding"] == (130, 320)


def test_ipv6_udp_fields():
    from scapy.all import UDP, IPv6, Raw

    packet = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5000, dport=53) / Raw(b"q" * 300)
    fields = spans(header_fields(slot_of(packet)))
    assert fields["ip6.src"] == (8, 24) and fields["ip6.dst"] == (24, 40)
    assert fields["udp.src_port"] == (40, 42) and fields["udp.checksum"] == (46, 48)
    assert fields["payload"] == (80, 320)  # 300 bytes cut to 240
    assert "payload.padding" not in fields


def test_zeroed_header_is_labelled_as_assumed_and_absent_packets():
    slot = np.zeros(320, np.uint8)
    slot[80:90] = 7  # payload present, header anonymised to zeros
    fields = spans(header_fields(slot, protocol=17, packet_length=38))
    assert fields["udp.src_port (assumed)"] == (20, 22)
    assert fields["payload"] == (80, 90)
    assert header_fields(np.zeros(320, np.uint8), packet_length=0) == [(0, 320, "absent")]
    flow = np.zeros(1600, np.uint8)
    assert [segments[0][2] for segments in field_map(flow)] == ["absent"] * 5


def test_occlusion_masks_agree_with_the_field_parser():
    from scapy.all import IP, TCP, UDP, IPv6, Raw

    packets = [
        IP(src="10.1.2.3", dst="10.4.5.6", options=b"\x01\x01\x01\x01") / TCP(sport=1, dport=2) / Raw(b"a" * 10),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=3, dport=4) / Raw(b"b" * 10),
        IP(src="10.1.2.3", dst="10.4.5.6", proto=47) / Raw(b"c" * 30),  # GRE-like: no ports
    ]
    flow = np.zeros((5, 320), np.uint8)
    for k, packet in enumerate(packets):
        flow[k] = slot_of(packet)
    masks = occlusion_masks(flow.reshape(1, -1))
    fields = field_map(flow.reshape(-1))
    for what, names in (
        ("addresses", ("ip.src", "ip.dst", "ip6.src", "ip6.dst")),
        ("ports", ("tcp.src_port", "tcp.dst_port", "udp.src_port", "udp.dst_port")),
    ):
        expected = np.zeros((5, 320), bool)
        for k, segments in enumerate(fields):
            for start, end, name in segments:
                if name in names:
                    expected[k, start:end] = True
        assert np.array_equal(masks[what].reshape(5, 320), expected), what
    assert masks["headers"].reshape(5, 320)[:, :80].all() and not masks["headers"].reshape(5, 320)[:, 80:].any()
    occluded = occlude(flow.reshape(1, -1), "payload").reshape(5, 320)
    assert not occluded[:, 80:].any() and np.array_equal(occluded[:, :80], flow[:, :80])


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = MMAEConfig.from_preset(
        "mmae-tiny", num_labels=3, num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64
    )
    return MMAEForSequenceClassification(config).eval()


def test_integrated_gradients_is_complete_and_ignores_zero_bytes(tiny_model):
    rng = np.random.default_rng(0)
    flows = rng.integers(0, 256, size=(2, 1600), dtype=np.uint8)
    flows[:, 1200:] = 0  # two absent packets
    attributions, delta = integrated_gradients(tiny_model, flows, target=[0, 2], steps=48)
    assert attributions.shape == (2, 1600) and attributions.dtype == np.float32
    assert np.all(attributions[:, 1200:] == 0)  # equal to the baseline: no path, no attribution
    with torch.no_grad():
        logits = tiny_model(input_bytes=torch.from_numpy(flows)).logits
        base = tiny_model(input_bytes=torch.zeros(2, 1600, dtype=torch.uint8)).logits
    # completeness: the attributions add up to the change of the explained logit (up to the Riemann error)
    change = np.array([logits[0, 0] - base[0, 0], logits[1, 2] - base[1, 2]])
    assert np.allclose(attributions.sum(1), change, atol=0.02 * np.abs(change).max() + 1e-4)
    assert np.abs(delta).max() <= 0.02 * np.abs(change).max() + 1e-4
    # default target = predicted class
    predicted, _ = integrated_gradients(tiny_model, flows[:1], steps=8)
    explicit, _ = integrated_gradients(tiny_model, flows[:1], target=[int(logits[0].argmax())], steps=8)
    assert np.allclose(predicted, explicit)


def test_write_explanation_files(tiny_model, tmp_path):
    from scapy.all import IP, TCP, Raw

    flow = np.zeros((5, 320), np.uint8)
    flow[0] = slot_of(IP(src="0.0.0.0", dst="0.0.0.0") / TCP(sport=0, dport=0, flags="S"))
    flow[1] = slot_of(IP(src="0.0.0.0", dst="0.0.0.0") / TCP(sport=0, dport=0, flags="PA") / Raw(b"\x16\x03" * 40))
    attributions, delta = integrated_gradients(tiny_model, flow.reshape(1, -1), steps=8)
    paths = write_explanation(
        tmp_path,
        "flow_00000",
        attributions[0],
        flow.reshape(-1),
        flow={
            "protocol": 6,
            "src_ip": "10.0.0.1",
            "src_port": 1,
            "dst_ip": "10.0.0.2",
            "dst_port": 443,
            "_inputs": "dropped",
        },
        explained_label="Web",
        delta=float(delta[0]),
    )
    grid = np.load(paths["npy"])
    assert grid.shape == (5, 320) and np.allclose(grid.reshape(-1), attributions[0])
    document = json.loads(paths["json"].read_text())
    assert document["explained_label"] == "Web" and "_inputs" not in document["flow"]
    assert {"ip.src", "tcp.flags", "payload", "absent"} <= set(document["fields"])
    assert sum(v["abs_share"] for v in document["fields"].values()) == pytest.approx(1.0, abs=1e-6)
    packet1 = {f["field"]: f for f in document["packets"][1]["fields"]}
    assert (packet1["payload"]["start"], packet1["payload"]["end"]) == (80, 160)
    top = document["top_bytes"][0]
    assert {"packet", "offset", "region", "field", "payload_offset", "value", "attribution"} <= set(top)
    assert abs(top["attribution"]) == pytest.approx(np.abs(grid).max(), rel=1e-6)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shortcut_report_on_synthetic_data(tiny_model):
    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

    split = make_synthetic_traffic_dataset(num_classes=3, flows_per_class=8, seed=1)["test"]
    report = shortcut_report(tiny_model, split, batch_size=4)
    assert report["num_flows"] == len(split)
    assert set(report["occlusions"]) == {"headers", "addresses", "ports", "payload"}
    # the synthetic flows carry zeroed addresses: occluding them changes nothing
    assert report["occlusions"]["addresses"]["nonzero_bytes_zeroed_fraction"] == 0.0
    assert report["occlusions"]["addresses"]["accuracy_drop"] == 0.0
    assert report["occlusions"]["ports"]["nonzero_bytes_zeroed_fraction"] > 0.0
    # the payload numbers are exactly those of the model on payload-zeroed inputs
    payload = np.asarray(split.with_format("numpy")["input_bytes"]).astype(np.uint8)
    zeroed = occlude(payload, "payload")
    accuracy = float((predict_logits(tiny_model, zeroed).argmax(-1) == np.asarray(split["label"])).mean())
    assert report["occlusions"]["payload"]["accuracy"] == pytest.approx(accuracy)
    assert report["occlusions"]["payload"]["accuracy_drop"] == pytest.approx(report["baseline"]["accuracy"] - accuracy)


def test_attention_rollout_shares(tiny_model):
    flows = torch.from_numpy(np.random.default_rng(3).integers(0, 256, size=(3, 1600), dtype=np.uint8))
    implementation = tiny_model.config._attn_implementation
    rollout = attention_rollout(tiny_model, flows)
    assert tiny_model.config._attn_implementation == implementation  # eager only for the rollout pass
    assert rollout.shape == (3, 1600) and (rollout >= 0).all()
    assert (rollout.sum(1) < 1.0 + 1e-5).all() and (rollout.sum(1) > 0.0).all()
    tokens = rollout.reshape(3, 400, 4)
    assert np.allclose(tokens, tokens[:, :, :1])  # token resolution: the 4 bytes of a token share equally
