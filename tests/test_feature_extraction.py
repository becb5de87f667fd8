"""MMAEFeatureExtractor: saved/loaded with the flow options, Auto and remote-code loading, conversions."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from traffic_pcaps import ether, handshake, pcap_bytes

import mmae_hf  # noqa: F401  (registers the Auto classes)
from mmae_hf.feature_extraction_mmae import DEFAULT_FLOW_OPTIONS, MMAEFeatureExtractor
from mmae_hf.traffic import FlowOptions, PacketAccounting, iter_flows

REPO = Path(__file__).resolve().parents[1]


def test_defaults_mirror_flow_options():
    assert DEFAULT_FLOW_OPTIONS == FlowOptions().to_dict()


def test_save_load_auto(tmp_path):
    from transformers import AutoFeatureExtractor

    fe = MMAEFeatureExtractor(flow_options=FlowOptions(anonymize="strict", idle_timeout=30.0))
    fe.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert cfg["feature_extractor_type"] == "MMAEFeatureExtractor"
    assert cfg["flow_options"]["anonymize"] == "strict" and cfg["flow_options"]["idle_timeout"] == 30.0
    assert cfg["model_input_names"][0] == "input_bytes"
    assert not list(tmp_path.glob("*.py")) and "auto_map" not in cfg  # dataset folders stay script-free
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(loaded, MMAEFeatureExtractor) and loaded.flow_options == fe.flow_options
    assert loaded.get_flow_options() == FlowOptions(anonymize="strict", idle_timeout=30.0)
    with pytest.raises(ValueError, match="unknown flow_options"):
        MMAEFeatureExtractor(flow_options={"anonymise": "none"})
    with pytest.raises(ValueError, match="anonymize"):
        MMAEFeatureExtractor(flow_options={"anonymize": "hide-all"})


def test_pcap_rows_and_records_give_the_same_inputs():
    data = pcap_bytes([(t, ether(p)) for t, p in handshake()])
    fe = MMAEFeatureExtractor()
    from_pcap = fe(data, return_tensors="pt")
    assert from_pcap["input_bytes"].dtype == torch.uint8 and tuple(from_pcap["input_bytes"].shape) == (1, 1600)
    assert tuple(from_pcap["flow_stats"].shape) == (1, 27) and from_pcap["packet_directions"].dtype == torch.int8
    records = list(fe.extract_flows(data, accounting=PacketAccounting()))
    rows = [r.to_row() for r in records]
    columns = {
        k: np.stack([r[k] for r in rows]) for k in ("input_bytes", "packet_lengths", "packet_iats", "flow_stats")
    }
    for inputs in (fe(records), fe(rows), fe(rows[0]), fe(columns)):
        assert np.array_equal(inputs["input_bytes"], from_pcap["input_bytes"].numpy())
        assert np.array_equal(inputs["packet_lengths"], from_pcap["packet_lengths"].numpy())
    assert not fe(columns)["packet_directions"].any()  # a missing column gives zeros
    listed = fe({"payload": [list(rows[0]["input_bytes"])] * 3})  # the old key is still accepted
    assert listed["input_bytes"].shape == (3, 1600)
    with pytest.raises(ValueError, match="expected"):
        fe({"payload": np.zeros((2, 100), dtype=np.uint8)})


def extraction_uses_the_stored_options(path, expected_flows):
    fe = MMAEFeatureExtractor(flow_options={"bidirectional": False, "anonymize": "netmamba", "tcp_close": False})
    got = sorted(fe.extract_flows(path), key=lambda f: f.start_time)
    want = sorted(iter_flows(path, FlowOptions(bidirectional=False, anonymize="netmamba", tcp_close=False)),
                  key=lambda f: f.start_time)  # fmt: skip
    default = list(iter_flows(path))  # bidirectional: half as many flows, so the options really applied
    assert len(got) == len(want) == expected_flows == 2 * len(default)
    assert all(np.array_equal(a.input_bytes, b.input_bytes) for a, b in zip(got, want))


def test_extraction_uses_the_stored_options():
    path = Path(__file__).resolve().parent / "data" / "netmamba_golden" / "flows" / "tls-chat-00.pcap"
    extraction_uses_the_stored_options(path, expected_flows=2)


@pytest.mark.shared_data
def test_extraction_uses_the_stored_options_on_ndpi(shared_dir):
    path = shared_dir / "data" / "ndpi-encrypted-services" / "Chat" / "WeChat__wechat__f0015.pcap"
    extraction_uses_the_stored_options(path, expected_flows=2)


def test_remote_code_without_mmae_hf(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a model folder
    fe = MMAEFeatureExtractor(flow_options={"anonymize": "none", "num_packets": 3})
    fe.save_pretrained(tmp_path)
    assert (tmp_path / "feature_extraction_mmae.py").is_file()
    cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert cfg["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_mmae.MMAEFeatureExtractor"}
    from transformers import AutoFeatureExtractor

    local = AutoFeatureExtractor.from_pretrained(tmp_path)  # mmae_hf imported: the local class, no prompt
    assert type(local) is MMAEFeatureExtractor and local.num_packets == 3
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["mmae_hf"] = None  # the package is not installed here
        import numpy as np
        from transformers import AutoFeatureExtractor
        fe = AutoFeatureExtractor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert type(fe).__module__.startswith("transformers_modules"), type(fe).__module__
        out = fe({{"payload": np.ones((2, 960), dtype=np.uint8)}}, return_tensors="np")
        assert out["input_bytes"].shape == (2, 960) and out["flow_stats"].shape == (2, 27)
        try:
            fe(b"\\xd4\\xc3\\xb2\\xa1" + bytes(20))
        except ImportError as e:
            assert "mmae-hf" in str(e)
        else:
            raise AssertionError("pcap input without mmae-hf must raise ImportError")
        print("OK", fe.flow_options["num_packets"])
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("OK 3")
