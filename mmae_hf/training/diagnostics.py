"""What a pre-trained MMAE encoder has learned: probes, few-shot subsets and masked-byte reconstruction by field.

These are the measurements behind the pre-training recipe (``benchmarks/diagnose_pretraining.py``) and the
label-efficiency study (``train/run_label_efficiency.py``):

* `few_shot_indices`: the k-per-class training subsets, drawn by seed, identical for every model of a study;
* `encoder_features` + `linear_probe`: a logistic-regression probe on the frozen encoder (CLS vector, mean of the
  token outputs, or both), its regularisation chosen on validation macro-F1 only;
* `byte_field_codes` + `reconstruction_by_field`: accuracy of the masked bytes the pre-training model reconstructs
  on held-out flows, broken down by header field (IP, TCP, UDP, TLS record header, payload, padding), beside a
  trivial baseline that predicts the most frequent byte of each position.
"""

import json
from pathlib import Path

import numpy as np
import torch

from ..data_contract import BYTE_COLUMN

# byte categories of `byte_field_codes` (one int8 code per input byte)
FIELD_NAMES = ("ip_header", "tcp_header", "udp_header", "tls_record_header", "payload", "padding")
_CODE = {name: i for i, name in enumerate(FIELD_NAMES)}
TLS_CONTENT_TYPES = (20, 21, 22, 23)  # change_cipher_spec, alert, handshake, application_data


# ------------------------------------------------------------------------------------------ few-shot subsets


def few_shot_indices(labels, k: int | None, seed: int) -> np.ndarray:
    """Row indices of a k-per-class training subset: for each class, ``k`` rows drawn without replacement by a
    generator seeded with ``seed`` (all rows of a class that has fewer). ``k=None`` gives every row. Sorted, so the
    subset does not depend on the order classes are visited; the same (labels, k, seed) always give the same rows."""
    labels = np.asarray(labels)
    if k is None:
        return np.arange(len(labels))
    if k < 1:
        raise ValueError(f"k must be >= 1 or None (all rows), got {k}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):  # sorted class ids: one draw per class, in a fixed order
        rows = np.flatnonzero(labels == label)
        chosen.append(rows if len(rows) <= k else rng.choice(rows, k, replace=False))
    return np.sort(np.concatenate(chosen))


# ------------------------------------------------------------------------------------------------- probes


@torch.no_grad()
def encoder_features(encoder, payload: np.ndarray, pooling: str = "cls", batch_size: int = 256) -> np.ndarray:
    """Frozen-encoder features of ``payload`` (uint8 ``[N, num_bytes]``): ``"cls"`` (the CLS output, what the
    classifier head reads), ``"mean"`` (mean of the byte-token outputs) or ``"cls+mean"`` (both, concatenated)."""
    if pooling not in ("cls", "mean", "cls+mean"):
        raise ValueError(f"pooling must be cls, mean or cls+mean, got {pooling!r}")
    was_training = encoder.training
    encoder.eval()
    parts = []
    for start in range(0, len(payload), batch_size):
        batch = torch.from_numpy(np.array(payload[start : start + batch_size], dtype=np.uint8))  # a writable copy
        hidden = encoder(input_bytes=batch).last_hidden_state.float()
        cls, tokens = hidden[:, 0], hidden[:, 1:].mean(dim=1)
        parts.append({"cls": cls, "mean": tokens, "cls+mean": torch.cat([cls, tokens], dim=-1)}[pooling].numpy())
    encoder.train(was_training)
    width = parts[0].shape[1] if parts else 0
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def linear_probe(
    train_x,
    train_y,
    val_x,
    val_y,
    test_x=None,
    test_y=None,
    *,
    num_labels: int,
    cs=(0.01, 0.1, 1.0, 10.0),
    seed: int = 0,
) -> dict:
    """Logistic regression on standardised features; C chosen by validation macro-F1 (test never looked at).

    Returns ``{"C", "validation": metrics, "test": metrics}`` with accuracy / macro-F1 / weighted-F1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ..evaluation import classification_metrics, headline

    if len(np.unique(train_y)) < 2:
        raise ValueError("a probe needs at least 2 classes in its training rows")
    names = [str(i) for i in range(num_labels)]
    scaler = StandardScaler().fit(train_x)
    tx, vx = scaler.transform(train_x), scaler.transform(val_x)
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed)
        clf.fit(tx, train_y)
        val = headline(classification_metrics(val_y, clf.predict(vx), names))
        if best is None or val["macro_f1"] > best[1]["macro_f1"]:
            best = (c, val, clf)
    c, val, clf = best
    result = {"C": c, "validation": val}
    if test_x is not None:
        result["test"] = headline(classification_metrics(test_y, clf.predict(scaler.transform(test_x)), names))
    return result


# -------------------------------------------------------------------------------------- byte fields


def byte_field_codes(
    payload: np.ndarray,
    packet_lengths: np.ndarray,
    protocol=None,
    *,
    num_packets: int = 5,
    header_bytes: int = 80,
    payload_bytes: int = 240,
) -> np.ndarray:
    """One `FIELD_NAMES` code per byte (``int8 [N, num_bytes]``).

    Header bytes are named by `mmae_hf.explain.field_map` (IP header incl. options, TCP / UDP header); bytes past
    the headers or past a packet's payload, and absent packets, are ``padding``. In the payload, TLS record headers
    (content type 20-23, version 3.x, then a 2-byte length) are followed record by record from the payload's start.
    """
    from ..explain import field_map

    payload = np.asarray(payload, dtype=np.uint8)
    codes = np.full(payload.shape, _CODE["padding"], np.int8)
    slot = header_bytes + payload_bytes
    for row in range(len(payload)):
        proto = None if protocol is None else int(protocol[row])
        fields = field_map(
            payload[row],
            protocol=proto,
            packet_lengths=packet_lengths[row],
            num_packets=num_packets,
            header_bytes=header_bytes,
            payload_bytes=payload_bytes,
        )
        for k, segments in enumerate(fields):
            base = k * slot
            for start, end, name in segments:
                if name.startswith("ip"):
                    code = _CODE["ip_header"]
                elif name.startswith("tcp"):
                    code = _CODE["tcp_header"]
                elif name.startswith("udp"):
                    code = _CODE["udp_header"]
                elif name == "payload":
                    code = _CODE["payload"]
                else:
                    continue
                codes[row, base + start : base + end] = code
                if name == "payload":
                    _mark_tls_records(payload[row, base + start : base + end], codes[row, base + start : base + end])
    return codes


def _mark_tls_records(data: np.ndarray, codes: np.ndarray) -> None:
    position = 0
    while position + 5 <= len(data):
        content_type, major, minor = int(data[position]), int(data[position + 1]), int(data[position + 2])
        if content_type not in TLS_CONTENT_TYPES or major != 3 or minor > 4:
            return
        codes[position : position + 5] = _CODE["tls_record_header"]
        position += 5 + (int(data[position + 3]) << 8 | int(data[position + 4]))


def most_frequent_bytes(payload: np.ndarray) -> np.ndarray:
    """The most frequent byte value at each position (``uint8 [num_bytes]``): the trivial reconstruction baseline."""
    payload = np.asarray(payload, dtype=np.uint8)
    counts = np.zeros((256, payload.shape[1]), np.int64)
    for value in range(256):
        counts[value] = (payload == value).sum(axis=0)
    return counts.argmax(axis=0).astype(np.uint8)


@torch.no_grad()
def reconstruct_masked_bytes(model, columns: dict, seed: int = 0, batch_size: int = 32, pairing: str = "random"):
    """Run the pre-training model (eval mode) on held-out flows with seeded FlowMix partners and mask noise.

    ``pairing``: ``"random"`` partners, or ``"similar"`` (the training collator's most-similar-statistics matching
    within each batch of ``batch_size`` flows; needs ``flow_stats``). The gap between the two says how much the
    reconstruction leans on a look-alike partner's tokens in the masked positions rather than on the flow's own.

    Returns ``(predicted uint8 [N, num_bytes], masked bool [N, num_bytes])``: the model's byte predictions
    (de-normalised and rounded) and which bytes were masked (replaced by the partner's under FlowMix).
    """
    from ..flowmix import greedy_symmetric_pairing, random_pairing, transform_flow_stats

    if pairing not in ("random", "similar"):
        raise ValueError(f"pairing must be random or similar, got {pairing!r}")
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    predicted, masked = [], []
    n = len(columns[BYTE_COLUMN])
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        batch = {
            name: torch.from_numpy(np.ascontiguousarray(columns[name][start:stop]))
            for name in (BYTE_COLUMN, "packet_lengths", "packet_iats", "packet_directions")
        }
        size = stop - start
        noise = torch.rand(size, config.num_tokens, generator=generator)
        partner = None
        if config.use_flowmix:
            partner = (
                random_pairing(size, generator)
                if pairing == "random"
                else greedy_symmetric_pairing(
                    transform_flow_stats(torch.from_numpy(np.asarray(columns["flow_stats"][start:stop], np.float32)))
                )
            )
        out = model(
            input_bytes=batch[BYTE_COLUMN],
            packet_lengths=batch["packet_lengths"],
            packet_iats=batch["packet_iats"],
            packet_directions=batch["packet_directions"],
            partner_index=partner,
            mask_noise=noise,
        )
        values = ((out.logits.float().reshape(size, -1) * 0.5 + 0.5) * 255.0).round().clamp(0, 255)
        predicted.append(values.to(torch.uint8).numpy())
        masked.append(out.mask.repeat_interleave(config.bytes_per_token, dim=1).numpy())
    model.train(was_training)
    return np.concatenate(predicted), np.concatenate(masked)


def reconstruction_by_field(
    predicted: np.ndarray,
    masked: np.ndarray,
    truth: np.ndarray,
    codes: np.ndarray,
    baseline: np.ndarray,
    mean_baseline: np.ndarray | None = None,
) -> dict:
    """Per `FIELD_NAMES` category (and ``all``), over the masked bytes: the model's exact-byte accuracy and mean
    absolute error, the same for the most-frequent-byte baseline, and how many masked bytes were scored. With
    ``mean_baseline`` (the mean byte of each position, `np.mean` over training flows) also the root mean squared
    error of the model and of that baseline: the best input-independent predictor under the model's own squared
    loss, so a model that does not beat it there has learned nothing about the flow it reads."""
    truth = np.asarray(truth, dtype=np.int16)
    model_hit = predicted.astype(np.int16) == truth
    base = np.broadcast_to(baseline.astype(np.int16), truth.shape)
    base_hit = base == truth
    model_err = np.abs(predicted.astype(np.int16) - truth)
    base_err = np.abs(base - truth)
    rows = {}
    for name in (*FIELD_NAMES, "all"):
        where = masked if name == "all" else masked & (codes == _CODE[name])
        count = int(where.sum())
        if count == 0:
            rows[name] = {"masked_bytes": 0}
            continue
        rows[name] = {
            "masked_bytes": count,
            "model_accuracy": float(model_hit[where].mean()),
            "baseline_accuracy": float(base_hit[where].mean()),
            "model_mae": float(model_err[where].mean()),
            "baseline_mae": float(base_err[where].mean()),
            "model_rmse": float(np.sqrt((model_err[where].astype(np.float64) ** 2).mean())),
        }
        if mean_baseline is not None:
            mean_err = np.broadcast_to(mean_baseline.astype(np.float64), truth.shape) - truth
            rows[name]["mean_baseline_rmse"] = float(np.sqrt((mean_err[where] ** 2).mean()))
    return rows


# ------------------------------------------------------------------------------------------ checkpoints


def load_pretraining_checkpoint(path, config=None):
    """An `MMAEForPreTraining` from a finished pre-training folder (``save_pretrained``) or from one of its
    ``checkpoints/checkpoint-<step>`` folders (accelerate state: ``model.safetensors`` of the student; the config
    comes from the run's ``pretraining_config.json`` two levels up unless given)."""
    from safetensors.torch import load_file

    from ..configuration_mmae import MMAEConfig
    from ..modeling_mmae import MMAEForPreTraining

    path = Path(path)
    if (path / "config.json").is_file():
        return MMAEForPreTraining.from_pretrained(str(path), dtype=torch.float32)
    if config is None:
        config_path = path.parent.parent / "pretraining_config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{path}: no config.json, and no pretraining_config.json at {config_path}")
        config = MMAEConfig.from_dict(json.loads(config_path.read_text()))
    model = MMAEForPreTraining(config)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: checkpoint has no model weights")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: does not match the run's config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


__all__ = [
    "FIELD_NAMES",
    "byte_field_codes",
    "encoder_features",
    "few_shot_indices",
    "linear_probe",
    "load_pretraining_checkpoint",
    "most_frequent_bytes",
    "reconstruct_masked_bytes",
    "reconstruction_by_field",
]
