"""What a traffic classifier looks at: per-byte attributions and occlusion ("shortcut") tests.

Two tools, both built on one description of the MMAE byte layout (5 packets x [80 header bytes from the IP
header on | 240 transport-payload bytes]):

* `header_fields` / `field_map` name every byte of a packet slot: IPv4 / IPv6 header fields, TCP / UDP
  fields, header padding, payload, payload padding. The header lengths are parsed from the bytes themselves
  (IPv4 IHL, TCP data offset), so options shift the fields where they really are.
* `integrated_gradients` attributes a class score to each of the 1600 input bytes (integrated gradients on
  the input of the byte embedding, the first linear map of the model, with the all-zero flow as baseline);
  `write_explanation` stores them as ``.npy`` + ``.json`` (per field, per packet, top bytes) and a PNG heatmap
  of the 5 x 320 grid with the header fields labelled.
* `OCCLUSIONS` / `occlude` zero the headers, the addresses, the ports or the payload of a batch of flows;
  `shortcut_report` re-evaluates a classifier on each occluded copy of a dataset split and reports the drop in
  accuracy and macro-F1 (``mmae-shortcut-report``).
"""

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data_contract import (
    ADDRESS_FIELDS,
    HEADER_BYTES,
    IPV4,
    IPV4_FIELDS,
    IPV4_MIN_HEADER,
    IPV6,
    IPV6_FIELDS,
    IPV6_HEADER,
    NUM_PACKETS,
    PAYLOAD_BYTES,
    PORT_FIELDS,
    PROTOCOL_TCP,
    PROTOCOL_UDP,
    TCP,
    TCP_FIELDS,
    TCP_MIN_HEADER,
    UDP_FIELDS,
    UDP_HEADER,
)
from .evaluation import classification_metrics, dataset_labels, json_default, predict_logits

SLOT_BYTES = HEADER_BYTES + PAYLOAD_BYTES


def _be16(data: np.ndarray, offset: int) -> int:
    return (int(data[offset]) << 8) | int(data[offset + 1])


def header_fields(
    slot: np.ndarray,
    protocol: int | None = None,
    packet_length: int | None = None,
    header_bytes: int = HEADER_BYTES,
    payload_bytes: int = PAYLOAD_BYTES,
) -> list[tuple[int, int, str]]:
    """Names the bytes of one packet slot: a list of ``(start, end, field)`` covering ``[0, len(slot))``.

    The IP version and header lengths are read from the bytes (IPv4 IHL, TCP data offset); fields cut by the
    80-byte header limit are truncated. A slot whose version nibble is neither 4 nor 6 (e.g. a header zeroed by
    anonymisation) is labelled as a 20-byte IPv4 header followed by the transport header of ``protocol``, with
    ``(assumed)`` appended to the names. An all-zero slot of an absent packet (``packet_length == 0``) is
    ``absent``.

    Args:
        slot: uint8 ``[header_bytes + payload_bytes]``, one packet of the MMAE layout.
        protocol: the flow's IP protocol, used when the header does not say (6 TCP, 17 UDP).
        packet_length: the packet's IP total length (``packet_lengths``), used to tell payload from padding
            when the header's own length field is zeroed.
    """
    slot = np.asarray(slot, dtype=np.uint8)
    total = len(slot)
    if packet_length == 0 or (packet_length is None and not slot.any()):
        return [(0, total, "absent")]
    segments: list[tuple[int, int, str]] = []

    def add(start, length, name, base=0):
        begin = base + start
        end = min(base + start + length, header_bytes)
        if begin < end:
            segments.append((begin, end, name))

    version = int(slot[0]) >> 4
    suffix = ""
    ip_length = None
    if version == 6:
        for start, length, name in IPV6_FIELDS:
            add(start, length, name)
        l4_offset = IPV6_HEADER
        l4_protocol = int(slot[IPV6["next_header"].offset])
        ip_length = IPV6_HEADER + _be16(slot, IPV6["payload_length"].offset)
    else:
        if version == 4:
            ihl = (int(slot[0]) & 0x0F) * 4
            l4_protocol = int(slot[IPV4["protocol"].offset])
            ip_length = _be16(slot, IPV4["total_length"].offset)
        else:
            ihl = IPV4_MIN_HEADER
            l4_protocol = int(protocol) if protocol is not None else -1
            suffix = " (assumed)"
        ihl = max(ihl, IPV4_MIN_HEADER)
        for start, length, name in IPV4_FIELDS:
            add(start, length, name + suffix)
        add(IPV4_MIN_HEADER, ihl - IPV4_MIN_HEADER, "ip.options" + suffix)
        l4_offset = ihl
    transports = (PROTOCOL_TCP, PROTOCOL_UDP)
    if l4_protocol not in transports and protocol in transports and version != 6:
        l4_protocol = int(protocol)
    if l4_protocol == PROTOCOL_TCP:
        offset_byte = l4_offset + TCP["data_offset"].offset
        data_offset = (int(slot[offset_byte]) >> 4) * 4 if offset_byte < header_bytes else TCP_MIN_HEADER
        data_offset = max(data_offset, TCP_MIN_HEADER)
        for start, length, name in TCP_FIELDS:
            add(start, length, name + suffix, base=l4_offset)
        add(TCP_MIN_HEADER, data_offset - TCP_MIN_HEADER, "tcp.options" + suffix, base=l4_offset)
        header_end = l4_offset + data_offset
    elif l4_protocol == PROTOCOL_UDP:
        for start, length, name in UDP_FIELDS:
            add(start, length, name + suffix, base=l4_offset)
        header_end = l4_offset + UDP_HEADER
    else:
        header_end = l4_offset
        add(0, header_bytes - l4_offset, "l4.header", base=l4_offset)
    covered = max((end for _, end, _ in segments), default=0)
    if covered < header_bytes:
        segments.append((covered, header_bytes, "header.padding"))
    if packet_length:
        ip_length = int(packet_length) if not ip_length else ip_length
    payload_length = None if not ip_length else max(0, ip_length - header_end)
    payload_end = total if payload_length is None else header_bytes + min(payload_length, payload_bytes)
    if payload_end > header_bytes:
        segments.append((header_bytes, payload_end, "payload"))
    if payload_end < total:
        segments.append((payload_end, total, "payload.padding"))
    return segments


def field_map(
    input_bytes: np.ndarray,
    protocol: int | None = None,
    packet_lengths: Sequence[int] | None = None,
    num_packets: int = NUM_PACKETS,
    header_bytes: int = HEADER_BYTES,
    payload_bytes: int = PAYLOAD_BYTES,
) -> list[list[tuple[int, int, str]]]:
    """`header_fields` of each packet slot of one flow (``input_bytes`` uint8 ``[num_packets * slot]``)."""
    slots = np.asarray(input_bytes, dtype=np.uint8).reshape(num_packets, header_bytes + payload_bytes)
    return [
        header_fields(
            slots[k],
            protocol=protocol,
            packet_length=None if packet_lengths is None else int(packet_lengths[k]),
            header_bytes=header_bytes,
            payload_bytes=payload_bytes,
        )
        for k in range(num_packets)
    ]


# ---------------------------------------------------------------------- occlusion (shortcut report)


def occlusion_masks(
    input_bytes: np.ndarray, num_packets: int = NUM_PACKETS, header_bytes: int = HEADER_BYTES
) -> dict[str, np.ndarray]:
    """Boolean masks ``[N, num_bytes]`` of the bytes each occlusion zeroes, vectorised over a batch.

    ``headers``: the 80 header bytes of every packet. ``payload``: the 240 payload bytes. ``addresses``: IPv4
    bytes 12-19 / IPv6 bytes 8-39. ``ports``: the first 4 bytes of the TCP / UDP header (after the parsed IPv4
    IHL or the 40-byte IPv6 header). Slots whose version nibble is neither 4 nor 6 are treated as IPv4 with a
    20-byte header (harmless: zeroing zeros).
    """
    data = np.asarray(input_bytes, dtype=np.uint8)
    count = data.shape[0]
    slots = data.reshape(count, num_packets, -1)
    slot_bytes = slots.shape[-1]
    position = np.arange(slot_bytes)[None, None, :]
    version = slots[:, :, 0] >> 4
    is_v6 = (version == 6)[:, :, None]
    ihl = np.where(version == 4, (slots[:, :, 0] & 0x0F).astype(np.int64) * 4, IPV4_MIN_HEADER)
    ihl = np.maximum(ihl, IPV4_MIN_HEADER)
    l4_offset = np.where(version == 6, IPV6_HEADER, ihl)[:, :, None]
    protocol = np.where(version == 6, slots[:, :, IPV6["next_header"].offset], slots[:, :, IPV4["protocol"].offset])[
        :, :, None
    ]
    present = slots.any(axis=-1, keepdims=True)
    addresses_v4 = (position >= IPV4["src"].offset) & (position < IPV4["dst"].end)
    addresses_v6 = (position >= IPV6["src"].offset) & (position < IPV6["dst"].end)
    addresses = np.where(is_v6, addresses_v6, addresses_v4) & present
    ports_end = TCP["dst_port"].end  # the two ports lead both the TCP and the UDP header
    ports = (position >= l4_offset) & (position < l4_offset + ports_end) & (position < header_bytes)
    # unparsed slots (zeroed version) still get the usual port position; other transports have no ports
    known_transport = (
        (protocol == PROTOCOL_TCP) | (protocol == PROTOCOL_UDP) | ((version != 4) & (version != 6))[:, :, None]
    )
    ports &= known_transport & present
    headers = np.broadcast_to(position < header_bytes, slots.shape)
    payload = np.broadcast_to(position >= header_bytes, slots.shape)
    return {
        "headers": headers.reshape(count, -1),
        "addresses": addresses.reshape(count, -1),
        "ports": ports.reshape(count, -1),
        "payload": payload.reshape(count, -1),
    }


OCCLUSIONS = ("headers", "addresses", "ports", "payload")


def occlude(input_bytes: np.ndarray, what: str, num_packets: int = NUM_PACKETS, header_bytes: int = HEADER_BYTES):
    """A copy of ``input_bytes`` ``[N, num_bytes]`` with the ``what`` bytes (one of `OCCLUSIONS`) zeroed."""
    if what not in OCCLUSIONS:
        raise ValueError(f"unknown occlusion {what!r}; choose from {OCCLUSIONS}")
    data = np.array(input_bytes, dtype=np.uint8, copy=True)
    data[occlusion_masks(data, num_packets=num_packets, header_bytes=header_bytes)[what]] = 0
    return data


def _aligned_labels(model, dataset_split) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Dataset labels, their names, and a map from model class id to dataset class id (None = identity)."""
    labels = dataset_labels(dataset_split)
    feature = getattr(dataset_split, "features", {}).get("label") if hasattr(dataset_split, "features") else None
    model_names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    if feature is None or not hasattr(feature, "names"):
        return labels, model_names, None
    data_names = list(feature.names)
    if model_names == data_names:
        return labels, data_names, None
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(model_names))
    if generic and len(model_names) == len(data_names):
        return labels, data_names, None
    missing = sorted(set(model_names) - set(data_names))
    if missing:
        raise ValueError(
            f"the model's classes {model_names} do not match the dataset's label names {data_names} "
            f"(not in the dataset: {missing})"
        )
    return labels, data_names, np.array([data_names.index(name) for name in model_names])


def shortcut_report(
    model, dataset_split, batch_size: int = 256, device=None, occlusions: Sequence[str] = OCCLUSIONS
) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``model`` on ``dataset_split`` as is and with each occlusion, and the drops.

    Returns a dict with ``baseline`` (metrics), ``occlusions`` (``{name: {accuracy, macro_f1, accuracy_drop,
    macro_f1_drop, bytes_zeroed_fraction}}``), ``num_flows`` and ``label_names``.
    """
    config = model.config
    num_packets = int(getattr(config, "num_packets", NUM_PACKETS))
    header_bytes = int(getattr(config, "header_bytes", HEADER_BYTES))
    labels, names, model_to_data = _aligned_labels(model, dataset_split)

    def scores(transform=None):
        logits = predict_logits(model, dataset_split, batch_size=batch_size, device=device, transform=transform)
        predicted = logits.argmax(-1)
        if model_to_data is not None:
            predicted = model_to_data[predicted]
        metrics = classification_metrics(labels, predicted, names)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    baseline = scores()
    report = {"num_flows": int(len(labels)), "label_names": names, "baseline": baseline, "occlusions": {}}
    for what in occlusions:
        zeroed = {"bytes": 0, "total": 0}

        def transform(batch, what=what, zeroed=zeroed):
            mask = occlusion_masks(batch, num_packets=num_packets, header_bytes=header_bytes)[what]
            zeroed["bytes"] += int((mask & (batch != 0)).sum())
            zeroed["total"] += int((batch != 0).sum())
            out = batch.copy()
            out[mask] = 0
            return out

        result = scores(transform)
        result["accuracy_drop"] = baseline["accuracy"] - result["accuracy"]
        result["macro_f1_drop"] = baseline["macro_f1"] - result["macro_f1"]
        # share of the non-zero bytes that this occlusion removed (0 = nothing left to occlude, e.g. anonymised)
        result["nonzero_bytes_zeroed_fraction"] = zeroed["bytes"] / zeroed["total"] if zeroed["total"] else 0.0
        report["occlusions"][what] = result
    return report


def format_shortcut_report(report: dict[str, Any]) -> str:
    lines = [
        f"flows: {report['num_flows']}",
        f"{'input':<12} {'accuracy':>9} {'drop':>8} {'macro-F1':>9} {'drop':>8} {'nonzero bytes zeroed':>21}",
        f"{'as is':<12} {report['baseline']['accuracy']:>9.4f} {'':>8} {report['baseline']['macro_f1']:>9.4f}",
    ]
    for what, r in report["occlusions"].items():
        lines.append(
            f"{'no ' + what:<12} {r['accuracy']:>9.4f} {r['accuracy_drop']:>+8.4f} {r['macro_f1']:>9.4f} "
            f"{r['macro_f1_drop']:>+8.4f} {r['nonzero_bytes_zeroed_fraction']:>21.1%}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- integrated gradients


def find_byte_embedding(model) -> torch.nn.Module:
    """The module that applies the model's first linear map to the normalised bytes: the owner of the
    ``Conv1d(1, hidden, kernel = stride = bytes_per_token)`` byte tokenizer (MMAE's ``patch_embeddings``, whose
    forward takes the normalised bytes ``[B, num_bytes]``)."""
    step = int(getattr(model.config, "bytes_per_token", 4))
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, torch.nn.Conv1d) and module.in_channels == 1 and module.stride[0] == step:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            return modules[parent] if parent else module
    raise ValueError(
        f"{type(model).__name__} has no Conv1d(1, hidden, stride={step}) byte embedding to attribute through"
    )


def integrated_gradients(
    model,
    input_bytes: torch.Tensor,
    target: torch.Tensor | Sequence[int] | None = None,
    steps: int = 32,
    internal_batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrated gradients of the target-class logit w.r.t. every input byte.

    The path runs from the all-zero flow (the padding value: "no packet") to the actual flow, through the
    input of the byte embedding (the normalised byte values that the first linear map reads), so the byte
    attributions sum to ``logit(x) - logit(baseline)`` up to the Riemann error (midpoint rule, ``steps``
    points). Everything else the model derives from ``input_bytes`` keeps the real flow's values.

    Args:
        input_bytes: uint8 / long ``[B, num_bytes]``.
        target: class per flow (default: the predicted class).
        steps: points on the path.
        internal_batch_size: path points evaluated per forward pass.

    Returns:
        ``(attributions [B, num_bytes] float32, delta [B])`` where delta is
        ``sum(attributions) - (logit(x) - logit(baseline))`` (the approximation error).
    """
    embedding = find_byte_embedding(model)
    device = next(model.parameters()).device
    input_bytes = torch.as_tensor(input_bytes).to(device)
    was_training = model.training
    model.eval()
    captured = {}
    replacement = {}

    def hook(module, args):
        if "value" in replacement:
            return (replacement["value"],) + tuple(args[1:])
        captured["value"] = args[0].detach()
        return None

    handle = embedding.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            logits = model(input_bytes=input_bytes).logits
            actual = captured.pop("value")
            model(input_bytes=torch.zeros_like(input_bytes))
            baseline = captured.pop("value")
        if target is None:
            target = logits.argmax(-1)
        target = torch.as_tensor(target, device=device).long().view(-1)
        count = input_bytes.shape[0]
        alphas = (torch.arange(steps, dtype=actual.dtype, device=device) + 0.5) / steps
        attributions = torch.zeros_like(actual)
        difference = actual - baseline
        with torch.no_grad():
            replacement["value"] = baseline
            baseline_logits = model(input_bytes=input_bytes).logits
            del replacement["value"]
        for index in range(count):
            total_grad = torch.zeros_like(actual[index : index + 1])
            for start in range(0, steps, internal_batch_size):
                chunk = alphas[start : start + internal_batch_size]
                shape = (len(chunk),) + (1,) * (actual.dim() - 1)
                path = baseline[index : index + 1] + chunk.view(shape) * difference[index : index + 1]
                path.requires_grad_(True)
                replacement["value"] = path
                repeated = input_bytes[index : index + 1].expand(len(chunk), -1)
                out = model(input_bytes=repeated).logits[:, target[index]]
                (grad,) = torch.autograd.grad(out.sum(), path)
                del replacement["value"]
                total_grad += grad.sum(0, keepdim=True)
            attributions[index] = (difference[index : index + 1] * total_grad / steps)[0]
    finally:
        handle.remove()
        replacement.clear()
        model.train(was_training)
    per_byte = attributions.reshape(count, -1)
    if per_byte.shape[1] != input_bytes.shape[1]:
        raise ValueError(
            f"the byte embedding reads {per_byte.shape[1]} values per flow, not one per input byte "
            f"({input_bytes.shape[1]}); cannot map attributions back to bytes"
        )
    picked = logits.gather(1, target[:, None])[:, 0] - baseline_logits.gather(1, target[:, None])[:, 0]
    delta = per_byte.sum(1) - picked
    return per_byte.float().cpu().numpy(), delta.float().cpu().numpy()


@torch.no_grad()
def attention_rollout(model, input_bytes: torch.Tensor) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much the CLS token, through all layers, draws on each token.

    Per layer the head-averaged attention is mixed with the identity (the residual path) and re-normalised; the
    product over layers gives the CLS row. Each token's share is spread evenly over its ``bytes_per_token``
    bytes, so the result has byte shape but token resolution, is non-negative and is class-agnostic (unlike
    `integrated_gradients`). The attention weights come from the eager kernel whatever the model's attention kernel is.

    Returns:
        float32 ``[B, num_bytes]``; each row sums to the share of the CLS row not kept on CLS itself.
    """
    device = next(model.parameters()).device
    input_bytes = torch.as_tensor(input_bytes).to(device)
    was_training = model.training
    model.eval()
    try:
        attentions = model(input_bytes=input_bytes, output_attentions=True).attentions  # any kernel: MMAE returns them
    finally:
        model.train(was_training)
    if not attentions or any(a is None for a in attentions):
        raise ValueError(f"{type(model).__name__} returned no attention weights; use integrated_gradients")
    length = attentions[0].shape[-1]
    identity = torch.eye(length, device=device, dtype=torch.float32)
    rollout = identity.expand(input_bytes.shape[0], length, length)
    for attention in attentions:
        mixed = 0.5 * attention.float().mean(1) + 0.5 * identity
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed @ rollout
    token_share = rollout[:, 0, 1:]  # CLS row, without CLS itself
    per_byte = token_share.repeat_interleave(int(model.config.bytes_per_token), dim=1) / model.config.bytes_per_token
    return per_byte.cpu().numpy().astype(np.float32)


def summarise_attribution(
    attribution: np.ndarray,
    input_bytes: np.ndarray,
    protocol: int | None = None,
    packet_lengths: Sequence[int] | None = None,
    num_packets: int = NUM_PACKETS,
    header_bytes: int = HEADER_BYTES,
    payload_bytes: int = PAYLOAD_BYTES,
    top: int = 20,
) -> dict[str, Any]:
    """Per-field, per-packet and top-byte views of one flow's byte attributions."""
    slot = header_bytes + payload_bytes
    grid = np.asarray(attribution, dtype=np.float64).reshape(num_packets, slot)
    fields = field_map(input_bytes, protocol, packet_lengths, num_packets, header_bytes, payload_bytes)
    total_abs = float(np.abs(grid).sum()) or 1.0
    per_field: dict[str, dict[str, float]] = {}
    packets = []
    byte_field = [[""] * slot for _ in range(num_packets)]
    for k, segments in enumerate(fields):
        entries = []
        for start, end, name in segments:
            values = grid[k, start:end]
            entry = {
                "start": start,
                "end": end,
                "field": name,
                "attribution": float(values.sum()),
                "abs_share": float(np.abs(values).sum() / total_abs),
            }
            entries.append(entry)
            base = name.replace(" (assumed)", "")
            agg = per_field.setdefault(base, {"attribution": 0.0, "abs_share": 0.0})
            agg["attribution"] += entry["attribution"]
            agg["abs_share"] += entry["abs_share"]
            for position in range(start, end):
                byte_field[k][position] = name
        packets.append({"packet": k, "abs_share": float(np.abs(grid[k]).sum() / total_abs), "fields": entries})
    order = np.argsort(-np.abs(grid).ravel())[:top]
    top_bytes = []
    data = np.asarray(input_bytes, dtype=np.uint8).reshape(num_packets, slot)
    for flat in order:
        k, position = divmod(int(flat), slot)
        in_payload = position >= header_bytes
        top_bytes.append(
            {
                "packet": k,
                "offset": position,
                "region": "payload" if in_payload else "header",
                "field": byte_field[k][position],
                "payload_offset": position - header_bytes if in_payload else None,
                "value": int(data[k, position]),
                "attribution": float(grid[k, position]),
            }
        )
    ranked = dict(sorted(per_field.items(), key=lambda item: -item[1]["abs_share"]))
    return {"fields": ranked, "packets": packets, "top_bytes": top_bytes}


def plot_attribution(
    attribution: np.ndarray,
    fields: list[list[tuple[int, int, str]]],
    path: str | Path,
    title: str = "",
    header_bytes: int = HEADER_BYTES,
    colour_label: str = "attribution (logit units)",
) -> Path:
    """PNG heatmap of a ``[packets, slot]`` attribution grid: per packet, the header bytes (with the field
    names on the axis, boundaries drawn) beside the payload bytes (payload offsets on the axis)."""
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede pyplot
    import matplotlib.pyplot as plt

    grid = np.asarray(attribution, dtype=np.float64).reshape(len(fields), -1)
    num_packets, slot = grid.shape
    limit = float(np.abs(grid).max()) or 1.0
    fig, axes = plt.subplots(
        num_packets,
        2,
        figsize=(18, 1.9 * num_packets + 1.2),
        squeeze=False,
        gridspec_kw={"width_ratios": [header_bytes * 3, slot - header_bytes], "hspace": 1.6, "wspace": 0.04},
    )
    image = None
    for k in range(num_packets):
        header_ax, payload_ax = axes[k]
        image = header_ax.imshow(
            grid[k : k + 1, :header_bytes],
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            aspect="auto",
            interpolation="nearest",
        )
        payload_ax.imshow(
            grid[k : k + 1, header_bytes:],
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            aspect="auto",
            interpolation="nearest",
        )
        ticks, labels = [], []
        payload_note = " (no payload)"
        for start, end, name in fields[k]:
            if end <= header_bytes:
                ticks.append((start + end - 1) / 2)
                labels.append(name.split(".", 1)[-1] if name != "header.padding" else "pad")
                header_ax.axvline(start - 0.5, color="black", linewidth=0.4)
            elif name == "absent":
                payload_note = " (absent)"
            elif name == "payload":
                payload_note = f" ({end - start} bytes)"
                if end < slot:
                    payload_ax.axvline(end - header_bytes - 0.5, color="black", linewidth=0.6)
        header_ax.set_xticks(ticks, labels=labels, rotation=90, fontsize=6)
        header_ax.set_yticks([])
        protocols = sorted(
            {name.split(".", 1)[0] for _, end, name in fields[k] if end <= header_bytes and "." in name}
            - {"header", "l4"}
        )
        header_ax.set_ylabel(f"pkt {k}", rotation=0, labelpad=18, fontsize=8)
        header_ax.set_title(f"packet {k} header ({'/'.join(protocols) or 'n/a'})", fontsize=8, loc="left")
        payload_ticks = np.arange(0, slot - header_bytes, 40)
        payload_ax.set_xticks(payload_ticks, labels=[str(t) for t in payload_ticks], fontsize=6)
        payload_ax.set_yticks([])
        payload_ax.set_title(f"payload offset{payload_note}", fontsize=8, loc="left")
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.015, pad=0.01, label=colour_label)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_explanation(
    out_dir: str | Path,
    name: str,
    attribution: np.ndarray,
    input_bytes: np.ndarray,
    flow: dict[str, Any] | None = None,
    explained_label: str | None = None,
    delta: float | None = None,
    packet_lengths: Sequence[int] | None = None,
    num_packets: int = NUM_PACKETS,
    header_bytes: int = HEADER_BYTES,
    payload_bytes: int = PAYLOAD_BYTES,
    plot: bool = True,
    method: str = "integrated_gradients",
) -> dict[str, Path]:
    """Writes ``<name>.npy`` (float32 ``[packets, slot]`` attributions), ``<name>.json`` (flow, explained label,
    per-field / per-packet shares, top bytes with packet, field and payload offset) and ``<name>.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slot = header_bytes + payload_bytes
    grid = np.asarray(attribution, dtype=np.float32).reshape(num_packets, slot)
    protocol = (flow or {}).get("protocol")
    summary = summarise_attribution(
        grid, input_bytes, protocol, packet_lengths, num_packets, header_bytes, payload_bytes
    )
    paths = {"npy": out_dir / f"{name}.npy", "json": out_dir / f"{name}.json"}
    np.save(paths["npy"], grid)
    document = {
        "method": method,
        "baseline": "all-zero flow" if method == "integrated_gradients" else None,
        "explained_label": explained_label,
        "completeness_delta": None if delta is None else float(delta),
        "layout": {"num_packets": num_packets, "header_bytes": header_bytes, "payload_bytes": payload_bytes},
        "flow": {k: v for k, v in (flow or {}).items() if not k.startswith("_")},
        **summary,
    }
    paths["json"].write_text(json.dumps(document, indent=1, default=json_default) + "\n")
    if plot:
        fields = field_map(input_bytes, protocol, packet_lengths, num_packets, header_bytes, payload_bytes)
        flow_text = ""
        if flow and flow.get("src_ip") is not None:
            flow_text = (
                f"{flow.get('src_ip')}:{flow.get('src_port')} -> {flow.get('dst_ip')}:{flow.get('dst_port')} "
                f"proto {flow.get('protocol')}  "
            )
        title = f"{flow_text}explained class: {explained_label}"
        colour_label = "attribution (logit units)" if method == "integrated_gradients" else "share of CLS attention"
        paths["png"] = plot_attribution(
            grid,
            fields,
            out_dir / f"{name}.png",
            title=f"{title}  [{method}]",
            header_bytes=header_bytes,
            colour_label=colour_label,
        )
    return paths


__all__ = [
    "ADDRESS_FIELDS",
    "IPV4_FIELDS",
    "IPV6_FIELDS",
    "PORT_FIELDS",
    "TCP_FIELDS",
    "UDP_FIELDS",
    "header_fields",
    "field_map",
    "occlusion_masks",
    "occlude",
    "OCCLUSIONS",
    "shortcut_report",
    "format_shortcut_report",
    "find_byte_embedding",
    "integrated_gradients",
    "attention_rollout",
    "summarise_attribution",
    "plot_attribution",
    "write_explanation",
]
