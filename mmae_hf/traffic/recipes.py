"""One recipe per public dataset of the MMAE paper: publisher file names -> labels, caps and flow options.

A `Recipe` maps the path of each raw capture (relative to the folder the user unpacked the publisher's archives
into) to a class name, or to None when the paper's pipeline does not use that capture. It also carries the
per-class minimum / maximum flow counts, per-class packet caps (ISCX-Tor: the first 60-300 packets of each flow)
and the flow assembly the paper's pipeline (NetMamba's) used: unidirectional flows keyed on the 5-tuple, with no
timeouts (all packets of one 5-tuple in one capture form one flow). Facts and sources:
``reference/paper_datasets.md`` of the project.

The split is not the paper's: NetMamba cut a random 80/10/10 per sample, which puts flows of one capture on both
sides. The paper recipes default to a per-class *time* split (the latest 10% of each class's flows are the test
set, the 10% before them validation), which works even for classes recorded in a single capture (most USTC-TFC
classes, ISCX-VPN's p2p). ``--split-by flow`` reproduces the paper's protocol (optimistic scores);
``--split-by file`` keeps every capture on one side, and the report lists the classes that then cannot reach
every split.

``python dataset_scripts/build_dataset.py --recipe iscx-vpn2016 --input RAW_DIR --output DIR``

Class counts with the full data: ISCX-VPN2016 7 (the paper's README says 8, an upper bound; NetMamba's rule gives
7), ISCX-Tor2016 8, USTC-TFC2016 20, CIC-IoT2022 6, CrossPlatform Android 181 / iOS 124 and CSTNET-TLS 1.3 119
(apps / classes left after the minimum-flow filter; the label maps keep every app, the filter decides).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from collections.abc import Callable

# NetMamba's splitter: per capture, every packet of one 5-tuple (as seen, not canonicalised) is one flow
PAPER_FLOW_OPTIONS = {"bidirectional": False, "idle_timeout": 1e9, "active_timeout": 1e9, "tcp_close": False}


@dataclass(frozen=True)
class Recipe:
    """How to turn one publisher's raw captures into a labelled dataset.

    Attributes:
        name: the ``--recipe`` name.
        title: human-readable name (the dataset card's title).
        description: what the recipe does, with its sources.
        label_for: relative POSIX path of a raw capture -> class name, or None to leave the capture out.
        min_flows_per_class / max_flows_per_class: the paper pipeline's caps (classes under the minimum are dropped).
        flow_options: `FlowOptions` fields that differ from the defaults.
        split_by: default split strategy (paper recipes: ``"time"``, see the module docstring).
        suffixes: capture file suffixes considered at all.
        expected_classes: number of classes the paper reports with the full data (None: data dependent).
        packet_caps: class -> max packets per flow in the paper pipeline (its splitter's ``-l N``); `build_dataset`
            reads each capture with its class's cap (``FlowOptions.max_packets``) unless a cap is given explicitly.
        manifest / group_column: for manifest-driven recipes, the manifest file inside the input folder and the
            column that names the split group.
    """

    name: str
    title: str
    description: str
    label_for: Callable = None
    min_flows_per_class: int = 0
    max_flows_per_class: int = None
    flow_options: dict = field(default_factory=dict)
    split_by: str = "time"
    suffixes: tuple = (".pcap", ".pcapng")
    expected_classes: int = None
    packet_caps: dict = field(default_factory=dict)
    manifest: str = None
    group_column: str = None

    def label_names(self, relpaths) -> dict:
        """{relative path: class} for the paths the recipe uses (the others are left out)."""
        out = {}
        for rel in relpaths:
            label = self.label_for(PurePosixPath(rel).as_posix())
            if label is not None:
                out[rel] = label
        return out

    def collect(self, root, special_files=None) -> tuple:
        """(captures, excluded relative names) for a raw folder (FIFOs, sockets, devices: see `walk_captures`)."""
        from .dataset import CaptureFile, walk_captures

        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: raw input folder of recipe {self.name!r} does not exist")
        files, excluded = [], []
        for rel in walk_captures(root, self.suffixes, special_files):
            label = self.label_for(rel)
            if label is None:
                excluded.append(rel)
            else:
                files.append(CaptureFile(str(root / rel), rel, label, rel))
        if not files:
            raise ValueError(
                f"{root}: no capture matches recipe {self.name!r} ({len(excluded)} captures left out, "
                f"e.g. {excluded[:3]})"
            )
        return files, excluded

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "min_flows_per_class": self.min_flows_per_class,
            "max_flows_per_class": self.max_flows_per_class,
            "flow_options": dict(self.flow_options),
            "split_by": self.split_by,
            "expected_classes": self.expected_classes,
            "packet_caps": dict(self.packet_caps),
        }


def _stem(rel: str) -> str:
    return PurePosixPath(rel).stem.strip()


def _segments(rel: str) -> tuple:
    return PurePosixPath(rel).parts


# ------------------------------------------------------------------------------------------------ ISCX-VPN2016
_VPN_PREFIXES = (
    (("vpn_netflix", "vpn_spotify", "vpn_voipbuster"), "browsing"),
    (("vpn_email",), "email"),
    (("vpn_icq_chat", "vpn_aim_chat", "vpn_skype_chat", "vpn_facebook_chat", "vpn_hangouts_chat"), "chat"),
    (("vpn_vimeo", "vpn_youtube"), "streaming"),
    (("vpn_ftp", "vpn_sftp", "vpn_skype_files"), "ftp"),
    (("vpn_skype_audio", "vpn_facebook_audio", "vpn_hangouts_audio"), "voip"),
    (("vpn_bittorrent",), "p2p"),
)


def iscx_vpn_label(rel: str):
    """NetMamba's ISCX-VPN rule: VPN captures only (``vpn_*``), class by file-name prefix (stray spaces stripped)."""
    name = PurePosixPath(rel).name.strip()
    if not name.endswith(".pcap"):  # NetMamba skips .pcapng
        return None
    for prefixes, label in _VPN_PREFIXES:
        if name.startswith(prefixes):
            return label
    return None


# ------------------------------------------------------------------------------------------------ ISCX-Tor2016
_TOR_CLASSES = {  # prefix (case-sensitive) -> max packets per unidirectional flow in NetMamba
    "BROWSING": 60,
    "CHAT": 100,
    "AUDIO": 100,
    "VIDEO": 200,
    "FILE-TRANSFER": 300,
    "MAIL": 300,
    "P2P": 150,
    "VOIP": 100,
}


def iscx_tor_label(rel: str):
    """Tor-folder captures whose name starts with an upper-case category prefix; nonTor captures are left out."""
    if any(seg.lower() == "nontor" for seg in _segments(rel)[:-1]):
        return None
    name = PurePosixPath(rel).name.strip()
    for prefix in _TOR_CLASSES:
        if name.startswith(prefix + "_") or name.startswith(prefix + "."):
            return prefix
    return None


# ------------------------------------------------------------------------------------------------ USTC-TFC2016
USTC_CLASSES = (
    "BitTorrent",
    "Cridex",
    "FTP",
    "Facetime",
    "Geodo",
    "Gmail",
    "Htbot",
    "Miuref",
    "MySQL",
    "Neris",
    "Nsis-ay",
    "Outlook",
    "SMB",
    "Shifu",
    "Skype",
    "Tinba",
    "Virut",
    "Weibo",
    "WorldOfWarcraft",
    "Zeus",
)
_USTC_PARTS = re.compile(r"^(SMB|Weibo)-\d+$")


def ustc_label(rel: str):
    """Class = capture stem (Benign/Malware dropped); ``SMB-1``/``SMB/x`` -> SMB, ``Weibo-3``/``Weibo/x`` -> Weibo."""
    parts = _segments(rel)
    stem = _stem(rel)
    if len(parts) >= 2 and parts[-2] in ("SMB", "Weibo"):
        return parts[-2]
    match = _USTC_PARTS.match(stem)
    if match:
        return match.group(1)
    return stem if stem in USTC_CLASSES else None


# ------------------------------------------------------------------------------------------------ CIC-IoT2022
_IOT_POWER = {"Audio": "Audio", "Cameras": "Cameras", "Home Automation": "Home Automation"}


def cic_iot_label(rel: str):
    """``1-Power/{Audio,Cameras,Home Automation}/<device>/...`` and the ``6-Attacks`` Flood / Hydra / Nmap trees."""
    parts = _segments(rel)[:-1]  # folders only
    for i, seg in enumerate(parts):
        rest = parts[i + 1 :]
        if seg == "1-Power" and len(rest) >= 2 and rest[0] in _IOT_POWER:  # pooled over device sub-folders
            return _IOT_POWER[rest[0]]
        if seg == "6-Attacks" and rest:
            if rest[0] == "1-Flood":
                return "Flood"
            if rest[0] == "2-RTSP Brute Force" and len(rest) >= 2 and rest[1] in ("Hydra", "Nmap"):
                return rest[1]
    return None


# ------------------------------------------------------------------------------------------------ CrossPlatform
def crossplatform_label(os_name: str) -> Callable:
    """``<country>/<os>/<app>.pcap`` -> ``<app>`` for one OS (countries merged)."""

    def label(rel: str):
        parts = _segments(rel)
        if len(parts) >= 2 and parts[-2].lower() == os_name:
            return _stem(rel)
        return None

    label.__doc__ = f"CrossPlatform {os_name}: class = app (file stem) of captures in an `{os_name}` folder."
    return label


# ------------------------------------------------------------------------------------------------ CSTNET-TLS 1.3
def cstnet_label(rel: str):
    """``<app>/<session>.pcap`` (the ``bi-flows`` release): class = the folder that holds the capture."""
    parts = _segments(rel)
    return parts[-2] if len(parts) >= 2 else None


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "iscx-vpn2016",
            "ISCX-VPN2016 (VPN captures)",
            "VPN captures of UNB's VPN-nonVPN set, NetMamba's prefix rule (7 classes: browsing, chat, email, ftp, "
            "p2p, streaming, voip; the MMAE README's 8 is an upper bound); 500-4000 unidirectional flows per class.",
            iscx_vpn_label,
            500,
            4000,
            PAPER_FLOW_OPTIONS,
            suffixes=(".pcap",),
            expected_classes=7,
        ),
        Recipe(
            "iscx-tor2016",
            "ISCX-Tor2016 (Tor captures)",
            "Tor captures of UNB's Tor-nonTor set, class = upper-case file-name prefix (8 classes); "
            "10-4000 unidirectional flows per class.",
            iscx_tor_label,
            10,
            4000,
            PAPER_FLOW_OPTIONS,
            expected_classes=8,
            packet_caps=dict(_TOR_CLASSES),
        ),
        Recipe(
            "ustc-tfc2016",
            "USTC-TFC2016",
            "Benign and malware captures of USTC-TFC2016, class = capture name (SMB and Weibo parts merged; "
            "20 classes); 500-2000 unidirectional flows per class.",
            ustc_label,
            500,
            2000,
            PAPER_FLOW_OPTIONS,
            expected_classes=20,
        ),
        Recipe(
            "cic-iot2022",
            "CIC-IoT2022 (power and attacks)",
            "CIC IoT 2022: 1-Power/{Audio,Cameras,Home Automation} pooled over devices, 6-Attacks Flood, Hydra, "
            "Nmap (6 classes); 200-6000 unidirectional flows per class.",
            cic_iot_label,
            200,
            6000,
            PAPER_FLOW_OPTIONS,
            expected_classes=6,
        ),
        Recipe(
            "crossplatform-android",
            "CrossPlatform Android",
            "ReCon cross-market app captures, Android: class = app (countries merged); apps with 50-2000 "
            "unidirectional flows (the paper reports 181 apps).",
            crossplatform_label("android"),
            50,
            2000,
            PAPER_FLOW_OPTIONS,
            expected_classes=181,
        ),
        Recipe(
            "crossplatform-ios",
            "CrossPlatform iOS",
            "ReCon cross-market app captures, iOS: class = app (countries merged); apps with 50-2000 "
            "unidirectional flows (the paper reports 124 apps).",
            crossplatform_label("ios"),
            50,
            2000,
            PAPER_FLOW_OPTIONS,
            expected_classes=124,
        ),
        Recipe(
            "cstnet-tls1.3",
            "CSTNET-TLS 1.3",
            "ET-BERT's CSTNET-TLS 1.3 session captures, class = app folder; 50-2000 unidirectional flows per "
            "class (ET-BERT lists 120 classes, the paper 119: the minimum drops the smallest).",
            cstnet_label,
            50,
            2000,
            PAPER_FLOW_OPTIONS,
            expected_classes=119,
        ),
        Recipe(
            "ndpi-encrypted-services",
            "nDPI encrypted services (development set)",
            "The project's development set: one pcap per flow, labels and source captures from manifest.csv; "
            "split by source capture (group = source_pcap), bidirectional flows, no caps.",
            None,
            0,
            None,
            {},
            split_by="group",
            manifest="manifest.csv",
            group_column="source_pcap",
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (see `RECIPES`)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}") from None


__all__ = [
    "PAPER_FLOW_OPTIONS",
    "RECIPES",
    "Recipe",
    "USTC_CLASSES",
    "get_recipe",
    "cic_iot_label",
    "crossplatform_label",
    "cstnet_label",
    "iscx_tor_label",
    "iscx_vpn_label",
    "ustc_label",
]
