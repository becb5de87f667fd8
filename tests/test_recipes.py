"""Recipes of the paper's datasets: publisher file names -> labels, on crafted captures and generated name lists."""

import numpy as np
import pytest
from dataset_pcaps import flow, write_pcap

from mmae_hf.traffic.dataset import build_dataset
from mmae_hf.traffic.recipes import RECIPES, USTC_CLASSES, get_recipe

# publishers' names (paper_datasets.md) -> the class the paper's pipeline gives them (None: left out)
VPN_NAMES = {
    "vpn_aim_chat1a.pcap": "chat",
    "vpn_aim_chat1b.pcap": "chat",
    "vpn_facebook_chat1a.pcap": "chat",
    "vpn_hangouts_chat1b.pcap": "chat",
    "vpn_icq_chat1a.pcap": "chat",
    "vpn_skype_chat1b.pcap": "chat",
    "vpn_email2a.pcap": "email",
    "vpn_email2b.pcap": "email",
    "vpn_ftps_A.pcap": "ftp",
    "vpn_sftp_B.pcap": "ftp",
    "vpn_skype_files1a.pcap": "ftp",
    "vpn_bittorrent.pcap": "p2p",
    "vpn_netflix_A.pcap": "browsing",
    "vpn_spotify_A.pcap": "browsing",
    "vpn_voipbuster1b.pcap": "browsing",
    "vpn_vimeo_A.pcap": "streaming",
    "vpn_youtube_A.pcap": "streaming",
    "vpn_facebook_audio2.pcap": "voip",
    "vpn_hangouts_audio1.pcap": "voip",
    "vpn_skype_audio2.pcap": "voip",
    " vpn_skype_audio1.pcap": "voip",  # a stray leading space, as in some distributed copies
    "vpn_chat.pcap": None,
    "facebook_chat_4a.pcap": None,
    "vpn_email2a.pcapng": None,
}
TOR_NAMES = {
    "Tor/AUDIO_spotifygateway.pcap": "AUDIO",
    "Tor/BROWSING_gate_SSL_Browsing.pcap": "BROWSING",
    "Tor/CHAT_aimchatgateway.pcap": "CHAT",
    "Tor/CHAT_gate_ICQ_chat.pcap": "CHAT",
    "Tor/FILE-TRANSFER_gate_FTP_transfer.pcap": "FILE-TRANSFER",
    "Tor/MAIL_Gateway_Thunderbird_Imap.pcap": "MAIL",
    "Tor/P2P_tor_p2p_vuze.pcap": "P2P",
    "Tor/VIDEO_Youtube_HTML5_Gateway.pcap": "VIDEO",
    "Tor/VOIP_Skype_Voice_Gateway.pcap": "VOIP",
    "Tor/tor_p2p_vuze-2-1.pcap": None,
    "Tor/tor_spotify2-1.pcap": None,
    "nonTor/CHAT_facebookchatgateway.pcap": None,
}
USTC_NAMES = {
    **{
        f"{'Malware' if n in ('Cridex', 'Geodo', 'Htbot', 'Miuref', 'Neris', 'Nsis-ay', 'Shifu', 'Tinba', 'Virut', 'Zeus') else 'Benign'}/{n}.pcap": n
        for n in USTC_CLASSES
        if n not in ("SMB", "Weibo")
    },
    "Benign/SMB-1.pcap": "SMB",
    "Benign/SMB/SMB-2.pcap": "SMB",
    "Benign/Weibo-1.pcap": "Weibo",
    "Benign/Weibo/Weibo-4.pcap": "Weibo",
    "Benign/readme.pcap": None,
}
IOT_NAMES = {
    "1-Power/Audio/Amazon Echo Dot/power1.pcap": "Audio",
    "1-Power/Cameras/Arlo Basestation/p.pcap": "Cameras",
    "1-Power/Home Automation/Gosund Plug/x.pcap": "Home Automation",
    "6-Attacks/1-Flood/ACK flood/a.pcap": "Flood",
    "6-Attacks/2-RTSP Brute Force/Hydra/run1/h.pcap": "Hydra",
    "6-Attacks/2-RTSP Brute Force/Nmap/run1/n.pcap": "Nmap",
    "1-Power/Other/LG TV/t.pcap": None,
    "3-Interactions/Audio/Echo/i.pcap": None,
    "2-Idle/idle.pcap": None,
    "1-Power/Audio/loose_in_class_folder.pcap": None,
}


@pytest.mark.parametrize(
    "recipe, names, expected",
    [
        ("iscx-vpn2016", VPN_NAMES, 7),
        ("iscx-tor2016", TOR_NAMES, 8),
        ("ustc-tfc2016", USTC_NAMES, 20),
        ("cic-iot2022", IOT_NAMES, 6),
    ],
)
def test_label_map_of_publisher_names(recipe, names, expected):
    r = get_recipe(recipe)
    got = {name: r.label_for(name) for name in names}
    assert got == names
    assert len({v for v in names.values() if v}) == expected == r.expected_classes


@pytest.mark.parametrize(
    "recipe, names", [("iscx-vpn2016", VPN_NAMES), ("iscx-tor2016", TOR_NAMES), ("cic-iot2022", IOT_NAMES)]
)
def test_recipe_builds_expected_class_set_from_crafted_captures(recipe, names, tmp_path):
    for name in names:
        # two distinct flows per capture; unidirectional recipes make each direction its own flow
        write_pcap(tmp_path / name, [flow(f"{name}/{k}", sport=30000 + k, packets=2) for k in range(2)])
    res = build_dataset(tmp_path, None, recipe=recipe, min_flows_per_class=0, max_flows_per_class=None, progress=False)
    classes = res.dataset["train"].features["label"].names
    assert classes == sorted({v for v in names.values() if v})
    rep = res.report
    left_out = [n for n, v in names.items() if v is None and not n.endswith(".pcapng")]  # VPN: .pcap only
    assert rep["input"]["files_excluded"] == len(left_out)
    # unidirectional, no timeouts: 2 flows x 2 directions per capture
    assert rep["flow_options"]["bidirectional"] is False
    assert rep["split"]["method"] == "time" and rep["recipe"]["name"] == recipe
    assert rep["flows"]["extracted"] == 4 * rep["input"]["files"]
    per_file = rep["files"]
    for name, label in names.items():
        if label is not None:
            assert per_file[name]["label"] == label


def test_ustc_recipe_on_crafted_captures_and_caps(tmp_path):
    for name in USTC_NAMES:
        write_pcap(tmp_path / name, [flow(f"{name}/{k}", sport=30000 + k, packets=1) for k in range(3)])
    res = build_dataset(
        tmp_path,
        None,
        recipe="ustc-tfc2016",
        min_flows_per_class=3,
        max_flows_per_class=5,
        progress=False,
        split_by="flow",
    )
    assert res.dataset["train"].features["label"].names == sorted(USTC_CLASSES)
    counts = res.report["class_counts"]
    totals = {c: sum(counts[s][c] for s in counts) for c in USTC_CLASSES}
    assert totals["SMB"] == totals["Weibo"] == 5  # two captures of 3 one-packet flows each, capped at 5
    assert all(totals[c] == 3 for c in USTC_CLASSES if c not in ("SMB", "Weibo"))
    assert res.report["input"]["excluded_examples"] == ["Benign/readme.pcap"]
    # a minimum of 4 flows keeps only the two classes made of two captures
    res = build_dataset(tmp_path, None, recipe="ustc-tfc2016", min_flows_per_class=4, progress=False)
    assert res.dataset["train"].features["label"].names == ["SMB", "Weibo"]
    assert len(res.report["flows"]["classes_below_minimum"]) == 18


def _crossplatform_names(rng, apps, os_name):
    names = []
    for app in apps:
        for country in rng.choice(["china", "india", "us"], size=rng.integers(1, 4), replace=False):
            names.append(f"{country}/{os_name}/{app}.pcap")
    return names


def test_large_recipes_label_maps_on_generated_names():
    rng = np.random.default_rng(0)
    android_apps = [f"com.app{i:03d}.android" for i in range(181)]
    ios_apps = [f"app{i:03d}" for i in range(124)]
    names = _crossplatform_names(rng, android_apps, "android") + _crossplatform_names(rng, ios_apps, "ios")
    names += ["README.pcap", "us/windows/thing.pcap"]
    for recipe, apps in (("crossplatform-android", android_apps), ("crossplatform-ios", ios_apps)):
        labels = get_recipe(recipe).label_names(names)
        assert sorted(set(labels.values())) == sorted(apps)
        assert len(set(labels.values())) == get_recipe(recipe).expected_classes
        assert all(f"/{recipe.split('-')[1]}/" in n for n in labels)
    cst_apps = [f"app-{i:03d}.example" for i in range(120)]
    cst_names = [f"bi-flows/{a}/{a}_session{j}.pcap" for a in cst_apps for j in range(2)]
    labels = get_recipe("cstnet-tls1.3").label_names(cst_names)
    assert sorted(set(labels.values())) == cst_apps


def test_crossplatform_recipe_reads_pcapng_named_pcap(tmp_path):
    """The CrossPlatform captures are pcapng files with a .pcap suffix; the OS folder selects the dataset."""
    for country in ("china", "us"):
        for os_name, app in (("android", "com.whatsapp"), ("ios", "WhatsApp")):
            write_pcap(
                tmp_path / country / os_name / f"{app}.pcap",
                [flow(f"{country}/{os_name}/{k}", sport=30000 + k, packets=2) for k in range(2)],
                pcapng=True,
            )
    assert (tmp_path / "us" / "ios" / "WhatsApp.pcap").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    res = build_dataset(tmp_path, None, recipe="crossplatform-android", min_flows_per_class=0, progress=False)
    assert res.dataset["train"].features["label"].names == ["com.whatsapp"]
    assert res.report["errors"] == [] and res.report["flows"]["extracted"] == 8  # 2 captures x 2 flows x 2 directions
    assert res.report["input"]["files_excluded"] == 2  # the iOS captures


def test_cstnet_minimum_drops_the_small_class_119_of_120(tmp_path):
    """The minimum-flow rule turns ET-BERT's 120 folders into the paper's 119 when one class is small."""
    from mmae_hf.traffic.dataset import cap_classes

    recipe = get_recipe("cstnet-tls1.3")
    labels = np.repeat(np.arange(120), [recipe.min_flows_per_class] * 119 + [recipe.min_flows_per_class - 1])
    split = np.zeros(len(labels), np.int8)
    keep, dropped, _ = cap_classes(
        labels,
        split,
        np.ones(len(labels), bool),
        min_flows=recipe.min_flows_per_class,
        max_flows=recipe.max_flows_per_class,
    )
    assert len(np.unique(labels[keep])) == 119 == recipe.expected_classes and list(dropped) == [119]


def test_recipe_registry_and_errors(tmp_path):
    assert set(RECIPES) >= {
        "iscx-vpn2016",
        "iscx-tor2016",
        "ustc-tfc2016",
        "cic-iot2022",
        "crossplatform-android",
        "crossplatform-ios",
        "cstnet-tls1.3",
        "ndpi-encrypted-services",
    }
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    write_pcap(tmp_path / "other.pcap", [flow("x")])
    with pytest.raises(ValueError, match="no capture matches recipe 'iscx-vpn2016'"):
        build_dataset(tmp_path, None, recipe="iscx-vpn2016", progress=False)


def _tor_capped_captures(root):
    """One capture per Tor class name, each one TCP connection whose two directions (two unidirectional flows in the
    paper's assembly) are one packet longer than the class's cap."""
    caps = get_recipe("iscx-tor2016").packet_caps
    lengths = {}
    for i, (name, label) in enumerate(TOR_NAMES.items()):
        if label is not None:
            long_flow = flow(name, sport=30000 + i)
            long_flow["payloads"] = [name.encode() + k.to_bytes(2, "big") for k in range(2 * (caps[label] + 1))]
            write_pcap(root / name, [long_flow])
            lengths[name] = caps[label] + 1
    return caps, lengths


def test_tor_recipe_applies_the_packet_cap_of_each_class(tmp_path):
    caps, lengths = _tor_capped_captures(tmp_path)
    assert caps == {
        "BROWSING": 60,
        "CHAT": 100,
        "AUDIO": 100,
        "VIDEO": 200,
        "FILE-TRANSFER": 300,
        "MAIL": 300,
        "P2P": 150,
        "VOIP": 100,
    }
    res = build_dataset(tmp_path, None, recipe="iscx-tor2016", min_flows_per_class=0, progress=False)
    rep = res.report
    assert rep["recipe"]["packet_caps"] == caps and "packet_caps_not_applied" not in rep["recipe"]
    assert rep["packet_caps"] == {"source": "recipe", "max_packets_by_class": {c: caps[c] for c in sorted(caps)}}
    assert rep["flow_options"]["max_packets"] == 0  # the caps are per class, not in the shared options
    rows = [row for split in res.dataset.values() for row in split]
    names = res.dataset["train"].features["label"].names
    assert len(rows) == 2 * len(lengths) == rep["flows"]["extracted"]
    for row in rows:  # each direction keeps exactly its class's first N packets, 20 ms apart
        cap = caps[names[row["label"]]]
        assert row["packet_count"] == cap
        assert row["end_time"] - row["start_time"] == pytest.approx(0.02 * (cap - 1), abs=1e-5)
        assert row["flow_stats"][0] == cap
    for name, label in TOR_NAMES.items():
        if label is not None:  # one packet over the cap in each direction
            assert rep["files"][name]["max_packets"] == caps[label]
            assert rep["files"][name]["packets_skipped"] == {"over_packet_cap": 2}
            assert rep["files"][name]["packets_read"] == 2 * lengths[name]
    packets = rep["packets"]
    assert packets["skipped"] == {"over_packet_cap": 2 * len(lengths)}
    assert packets["packets_read"] == packets["packets_in_flows"] + 2 * len(lengths)
    assert "over_packet_cap" in str(res.card) and "'BROWSING': 60" in str(res.card)
    # worker processes read each capture with its own class's cap too
    par = build_dataset(tmp_path, None, recipe="iscx-tor2016", min_flows_per_class=0, num_proc=2, progress=False)
    assert par.report["files"] == rep["files"]


def test_explicit_max_packets_overrides_the_tor_caps(tmp_path):
    _, lengths = _tor_capped_captures(tmp_path)
    res = build_dataset(tmp_path, None, recipe="iscx-tor2016", min_flows_per_class=0, max_packets=0, progress=False)
    assert res.report["packet_caps"]["source"] == "max_packets=0 (overrides the recipe's packet_caps)"
    assert set(res.report["packet_caps"]["max_packets_by_class"].values()) == {0}
    assert res.report["packets"]["skipped"] == {}
    assert sorted(r["packet_count"] for s in res.dataset.values() for r in s) == sorted(
        n for n in lengths.values() for _ in range(2)
    )
    res = build_dataset(
        tmp_path, None, recipe="iscx-tor2016", min_flows_per_class=0, flow_options={"max_packets": 50}, progress=False
    )
    assert {r["packet_count"] for s in res.dataset.values() for r in s} == {50}
    assert res.report["flow_options"]["max_packets"] == 50
    assert set(res.report["packet_caps"]["max_packets_by_class"].values()) == {50}
