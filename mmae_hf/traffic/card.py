"""The dataset card (README.md with YAML metadata) of a built flow dataset, generated from its build report."""

from pathlib import Path

from ..data_contract import (
    BYTE_COLUMN,
    COLUMN_DESCRIPTIONS,
    FLOW_ARRAY_COLUMNS,
    FLOW_SCALAR_COLUMNS,
    FLOW_STAT_NAMES,
    IPV4_FIELDS,
    IPV6_FIELDS,
    TCP_FIELDS,
    UDP_FIELDS,
    column_widths,
)

# Unit and meaning of each flow statistic, keyed by name (the order is `FLOW_STAT_NAMES`).
# Lengths are IP total lengths (IPv6: 40 + payload length); times are seconds.
STAT_DEFINITIONS = {
    "packet_count": ("packets", "packets in the flow"),
    "byte_count": ("bytes", "sum of IP lengths over the flow"),
    "length_mean": ("bytes", "mean IP length"),
    "length_std": ("bytes", "population standard deviation of IP lengths"),
    "length_min": ("bytes", "smallest IP length"),
    "length_max": ("bytes", "largest IP length"),
    "fwd_length_mean": ("bytes", "mean IP length, initiator to responder"),
    "bwd_length_mean": ("bytes", "mean IP length, responder to initiator (0 without reply)"),
    "bwd_length_max": ("bytes", "largest IP length, responder to initiator"),
    "duration": ("seconds", "last minus first packet time"),
    "iat_mean": ("seconds", "mean gap between consecutive packets"),
    "iat_std": ("seconds", "population standard deviation of the gaps"),
    "iat_min": ("seconds", "smallest gap"),
    "iat_max": ("seconds", "largest gap"),
    "fwd_iat_mean": ("seconds", "mean gap between consecutive initiator packets"),
    "payload_mean": ("bytes", "mean TCP/UDP payload length"),
    "payload_max": ("bytes", "largest TCP/UDP payload length"),
    "zero_payload_fraction": ("fraction", "share of packets without transport payload"),
    "packets_per_second": ("packets/s", "packet_count / duration (0 if duration is 0)"),
    "bytes_per_second": ("bytes/s", "byte_count / duration (0 if duration is 0)"),
    "syn_count": ("packets", "TCP packets with SYN (0 for UDP)"),
    "fin_count": ("packets", "TCP packets with FIN"),
    "rst_count": ("packets", "TCP packets with RST"),
    "psh_count": ("packets", "TCP packets with PSH"),
    "fwd_packet_fraction": ("fraction", "share of packets sent by the initiator"),
    "fwd_byte_fraction": ("fraction", "share of bytes sent by the initiator"),
    "direction_changes": ("count", "times the sending side changes between consecutive packets"),
}


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return name
    return "10M<n<100M"


def _table(header, rows, numeric: bool = True) -> str:
    """Markdown table; with ``numeric`` every column but the first is right-aligned."""
    align = ["---" if i == 0 or not numeric else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def class_count_table(report: dict) -> str:
    """Markdown table: one row per class, flows per split and in total."""
    splits = list(report["class_counts"])
    rows = []
    for name in report["classes"]:
        per = [report["class_counts"][s][name] for s in splits]
        rows.append([name, *per, sum(per)])
    totals = [sum(report["class_counts"][s].values()) for s in splits]
    rows.append(["**total**", *totals, sum(totals)])
    return _table(["class", *splits, "total"], rows)


def stat_definitions_table(stat_names=None) -> str:
    """Markdown table of the ``flow_stats`` columns: index, name, unit, meaning."""
    if stat_names is None:
        stat_names = FLOW_STAT_NAMES
    rows = [[i, f"`{name}`", *STAT_DEFINITIONS.get(name, ("", ""))] for i, name in enumerate(stat_names)]
    return _table(["index", "name", "unit", "meaning"], rows, numeric=False)


def columns_table(flow_options: dict) -> str:
    """Markdown table of the data contract's columns for a byte layout: name, type, meaning."""
    widths = column_widths(flow_options["num_packets"], flow_options["header_bytes"], flow_options["payload_bytes"])
    rows = [
        [f"`{name}`", f"{dtype} x {widths[name]}", COLUMN_DESCRIPTIONS[name]]
        for name, dtype in FLOW_ARRAY_COLUMNS.items()
    ]
    rows.append(["`label`", "ClassLabel", COLUMN_DESCRIPTIONS["label"]])
    rows += [[f"`{name}`", "string", COLUMN_DESCRIPTIONS[name]] for name in ("source_file", "group")]
    rows += [[f"`{name}`", dtype, COLUMN_DESCRIPTIONS[name]] for name, dtype in FLOW_SCALAR_COLUMNS.items()]
    return _table(["column", "type", "meaning"], rows, numeric=False)


def header_fields_table() -> str:
    """Markdown table of the IPv4 / IPv6 / TCP / UDP header fields: field, offset, length."""
    fields = (*IPV4_FIELDS, *IPV6_FIELDS, *TCP_FIELDS, *UDP_FIELDS)
    return _table(["field", "offset", "bytes"], [[f"`{f.name}`", f.offset, f.length] for f in fields])


def make_dataset_card(report: dict, *, pretty_name=None, license=None):
    """A `huggingface_hub.DatasetCard` describing a built dataset (class counts per split, how it was split and
    anonymised, what was dropped and why, the statistics' definitions).

    ``license``: the captures' license as a Hub license id (``cc0-1.0``, ``cc-by-4.0``, ``other``, ...); default
    ``unknown``, with a line in the card saying that the builder cannot know it.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    opts = report["flow_options"]
    split = report["split"]
    flows = report["flows"]
    dup = report.get("duplicates") or {}
    packets = report["packets"]
    total = flows["final"]
    data = DatasetCardData(
        # a folder's name, never a path of the building machine
        pretty_name=pretty_name
        or f"{report['input'].get('recipe') or Path(str(report['input'].get('root'))).name} flows",
        license=license or "unknown",
        task_categories=["other"],  # the Hub has no traffic task; the models' task is traffic-classification
        tags=["network-traffic", "encrypted-traffic", "pcap", "flow-classification", "traffic-classification", "mmae"],
        size_categories=[_size_category(total)],
    )
    # our own metadata, under one key so that it cannot clash with the Hub's
    data.mmae_hf = {
        "split_method": split["method"],
        "split_seed": split["seed"],
        "split_ratios": split["ratios"],
        "anonymization": opts["anonymize"],
        "flow_options": opts,
        "class_counts": report["class_counts"],
        "packets_read": packets["packets_read"],
        "packets_in_flows": packets["packets_in_flows"],
        "packets_skipped": packets["skipped"],
        "duplicates_removed": flows["removed_duplicates"],
        "flow_stat_names": list(FLOW_STAT_NAMES),
    }
    skipped_rows = [[reason, n] for reason, n in packets["skipped"].items()] or [["(none)", 0]]
    missing = split.get("classes_missing_from_splits") or {}
    missing_text = (
        "".join(f"\n  - `{c}`: not in {', '.join(s)}" for c, s in missing.items())
        if missing
        else "none (every class is in every split)."
    )
    dropped = flows.get("classes_below_minimum") or {}
    dropped_text = ", ".join(f"`{c}` ({n} flows)" for c, n in dropped.items()) if dropped else "none"
    min_text = (
        f"Classes removed for having fewer than {flows['min_flows_per_class']} flows: {dropped_text}."
        if flows["min_flows_per_class"]
        else "No minimum number of flows per class."
    )
    capped = flows.get("removed_by_cap") or {}
    capped_text = ", ".join(f"`{c}` (-{n})" for c, n in capped.items()) if capped else "none"
    conflicts = dup.get("label_conflicts") or []
    recipe = report.get("recipe")
    recipe_section = f"\n## Recipe\n\n`{recipe['name']}`: {recipe['description']}\n" if recipe else ""
    direction = "bidirectional: one per connection" if opts["bidirectional"] else "unidirectional: one per direction"
    caps = {c: n for c, n in ((report.get("packet_caps") or {}).get("max_packets_by_class") or {}).items() if n}
    caps_text = ""
    if caps:
        caps_text = (
            f"\n\nPackets per flow capped ({report['packet_caps']['source']}): only the first N packets "
            f"of each flow are kept, N by class: {caps}. Later packets of a flow are dropped "
            "(`over_packet_cap`); `packet_count`, `byte_count`, `end_time` and `flow_stats` describe the "
            "kept packets only."
        )
        if report["packet_caps"]["source"] == "recipe":
            caps_text += (
                " The caps depend on the class, so `preprocessor_config.json` holds none: flows read at "
                "inference are not capped."
            )
    license_text = (
        f"`{license}`."
        if license
        else "`unknown`: the flows come from captures whose terms the builder "
        "cannot know; set `license:` above to the captures' license before publishing."
    )
    body = f"""
# {data.pretty_name}

Flow-level encrypted-traffic classification data built with mmae-hf
(`mmae_hf.traffic.dataset.build_dataset`, version {report["mmae_hf_version"]}). One row is one flow ({direction}):
the first {opts["num_packets"]} packets x ({opts["header_bytes"]} header bytes from the IP header on +
{opts["payload_bytes"]} transport-payload bytes) in `{BYTE_COLUMN}`, per-packet lengths, gaps and directions,
{len(FLOW_STAT_NAMES)} flow statistics, the class in `label` and the capture it came from in `source_file`.

```python
from datasets import load_dataset   # or datasets.load_from_disk(folder) for a local build
ds = load_dataset("<this repo>")
```

License: {license_text}
{recipe_section}
## Classes and splits

{class_count_table(report)}

- Split: **{split["method"]}** (ratios train/validation/test = {split["ratios"]["train"]:.2f}/{split["ratios"]["validation"]:.2f}/{split["ratios"]["test"]:.2f}, seed {split["seed"]}),
  stratified by class. Groups per split: {split.get("groups_per_split")}. Groups on more than one split:
  {len(split.get("groups_on_several_splits") or [])}.
- Classes missing from a split: {missing_text}
- {min_text}
- Per-class cap: {flows["max_flows_per_class"] or "none"}; flows removed by it: {capped_text}.

## Anonymisation and flow assembly

Anonymisation profile **`{opts["anonymize"]}`** (see `mmae_hf.traffic.ANONYMIZATION_PROFILES`). Flow options:
`{opts}`. The same options are saved in `preprocessor_config.json` (`MMAEFeatureExtractor`) and must be reused at
inference.{caps_text}

## Dropped packets and flows

{packets["packets_read"]} packets read from {report["input"]["files"]} captures, {packets["packets_in_flows"]} in flows.
{len(report.get("errors") or [])} capture(s) reported errors (see `build_report.json`).

{_table(["skip reason", "packets"], skipped_rows)}

Exact duplicate payloads: {dup.get("duplicate_clusters", 0)} clusters, {flows["removed_duplicates"]} flows removed
({dup.get("removed_within_split", 0)} within a split, {dup.get("removed_across_splits", 0)} across splits:
{dup.get("across_split_pairs", {})}). Payloads shared by different classes (label conflicts): {len(conflicts)}.

## Columns

{columns_table(opts)}

Header bytes of each packet slot (offsets from the start of the IP header, or of the TCP/UDP header after it):

{header_fields_table()}

## Flow statistics (`flow_stats`)

Raw values, no scaling; statistics of an empty set are 0.

{stat_definitions_table(FLOW_STAT_NAMES)}
"""
    content = f"---\n{data.to_yaml()}\n---\n{body}"
    return DatasetCard(content)


__all__ = [
    "STAT_DEFINITIONS",
    "class_count_table",
    "columns_table",
    "header_fields_table",
    "make_dataset_card",
    "stat_definitions_table",
]
