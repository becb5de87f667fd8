# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The ``traffic-classification`` pipeline: a capture in, one prediction per flow out.

```python
import mmae_hf  # registers the task
from transformers import pipeline

classify = pipeline("traffic-classification", model="path/or/repo", batch_size=256)
flows = classify("capture.pcap", top_k=3)
# [{"source_file": "capture.pcap", "src_ip": "10.0.0.1", "src_port": 51234, "dst_ip": ..., "dst_port": 443,
#   "protocol": 6, "start_time": ..., "end_time": ..., "packet_count": 12, "byte_count": 4242,
#   "label": "Web", "score": 0.91, "top_k": [{"label": "Web", "score": 0.91}, ...],
#   "ood": False, "ood_score": 0.91}, ...]
```

Inputs: a path to a pcap / pcapng file, the bytes of one, a list of paths (one list of flow records per
path), or flows that were already extracted (a dict with ``input_bytes`` of shape ``[1600]`` / ``[N, 1600]``, or a
uint8 array of that shape). Every input goes through the `MMAEFeatureExtractor` saved beside the weights
(``preprocessor_config.json``): it cuts the flows with the settings the training data was built with and makes the
model inputs, so inference sees exactly the preprocessing of training. A model folder without one gets the default
extractor, with a warning.

``batch_size`` counts *flows*: one capture yields many flows, which are batched inside the pipeline (the
stock pipeline batching pads tokenizer outputs and does not apply here), so the pipeline-level batching of
transformers always runs with one input at a time.

Out-of-distribution flag: ``ood`` is True when the highest class probability is below
``config.ood_threshold`` (calibrated on validation data with `calibrate_ood_threshold`); it is None when the
model has no calibrated threshold.

Remote code: this file is copied next to the weights by ``pipe.save_pretrained`` and may then be loaded with
``trust_remote_code=True`` in a process without mmae-hf. It therefore imports only numpy, torch, transformers and
its single-dot siblings (`feature_extraction_mmae`, `data_contract`) at module level; the pcap reader
(``mmae_hf.traffic``) is imported inside ``try`` blocks. Without mmae-hf installed the pipeline classifies
pre-extracted flows; pcap input needs mmae-hf installed (``pip install .`` in a clone of its repository).
"""

import inspect
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import ChunkPipeline
from transformers.utils import logging

from .data_contract import BYTE_COLUMN, FLOW_METADATA_FIELDS, MODEL_INPUT_NAMES, is_capture_bytes
from .feature_extraction_mmae import MMAEFeatureExtractor


logger = logging.get_logger(__name__)

TASK = "traffic-classification"
FLOW_FIELDS = FLOW_METADATA_FIELDS  # per-flow metadata copied into every prediction (in this order)
DEFAULT_FLOW_BATCH_SIZE = 64


def _traffic_module():
    """``mmae_hf.traffic`` or None when mmae-hf is not installed (remote-code use)."""
    try:
        import mmae_hf.traffic as traffic
    except ImportError:
        return None
    return traffic


def _require_trained_head(model, allow_untrained_head: bool) -> None:
    """Refuse a model whose classification head was never trained (see `mmae_hf.checks.require_trained_head`)."""
    try:
        from mmae_hf.checks import require_trained_head
    except ImportError:  # remote code without mmae-hf: not checked
        return
    require_trained_head(model, allow_untrained_head=allow_untrained_head, override="allow_untrained_head=True")


def is_pcap_bytes(data: bytes) -> bool:
    """True when ``data`` starts with a pcap or pcapng magic number."""
    return is_capture_bytes(data)


def _source_name(source: Any, default: str = "<bytes>") -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return default


def _to_numpy(value):
    return value.detach().cpu().numpy() if torch.is_tensor(value) else value


def _flow_metadata(flow, source_name: str | None = None) -> dict:
    """The `FLOW_FIELDS` of a flow (a `FlowRecord` or a row dict; missing ones None) as Python values."""
    meta = {}
    for field in FLOW_FIELDS:
        value = flow.get(field) if isinstance(flow, dict) else getattr(flow, field, None)
        meta[field] = value.item() if isinstance(value, np.generic) else value
    if not meta["source_file"] and source_name is not None:
        meta["source_file"] = source_name
    return meta


def _verify_weights(model, allow_mismatched_weights: bool) -> None:
    """`mmae_hf.weight_check.verify_loaded_model` where mmae-hf is installed (this file also runs as remote code)."""
    try:
        from mmae_hf.weight_check import verify_loaded_model
    except ImportError:
        return
    verify_loaded_model(model, allow_mismatched_weights=allow_mismatched_weights)


class TrafficClassificationPipeline(ChunkPipeline):
    """Per-flow traffic classification of pcap / pcapng captures with an MMAE classifier.

    Each input is split into flows by the streaming pcap reader with the feature extractor's `FlowOptions`; the
    flows are encoded and classified in batches of ``batch_size`` flows; each flow becomes one dict holding
    its 5-tuple, start and end time, packet and byte count, the top-k labels with probabilities and the
    out-of-distribution flag (see the module docstring).

    Construction: ``allow_untrained_head=True`` (passed to ``pipeline(...)``) accepts a model whose classification
    head was never trained (a pre-training folder, a bare encoder); without it such a model is refused, since its
    labels would be random.

    Call parameters (also accepted by ``pipeline(...)``):
        top_k (`int`, defaults to 3): labels returned per flow (capped at the number of classes).
        batch_size (`int`, defaults to 64): flows per model call.
        ood_threshold (`float`, *optional*): overrides ``config.ood_threshold`` for this call.
        errors (`str`, defaults to ``"warn"``): what a damaged capture does. ``"warn"`` logs an error naming the
            file and returns the flows read before the damage; ``"raise"`` raises the reader's error.
        source_name (`str`, *optional*): name recorded as ``source_file`` for bytes input.

    After each input, ``self.last_accounting`` holds the reader's `PacketAccounting` (packets read, packets
    skipped and why, errors) for that input.
    """

    # v5 component flags: no tokenizer / processors; the feature extractor is loaded by `__init__` (the one saved
    # beside the weights, else the default one with a warning).
    _load_processor = False  # type: ignore[assignment]
    _load_image_processor = False  # type: ignore[assignment]
    _load_video_processor = False  # type: ignore[assignment]
    _load_tokenizer = False  # type: ignore[assignment]
    _load_feature_extractor = None

    def __init__(self, *args, allow_untrained_head: bool = False, allow_mismatched_weights: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        _verify_weights(self.model, allow_mismatched_weights)  # a config that does not fit the weights is refused
        _require_trained_head(self.model, allow_untrained_head)  # a head never trained gives random labels
        # `batch_size` counts flows and is applied in `preprocess`; the base class's own batching (padding
        # collate of tokenizer outputs) must stay at one input per step.
        self.flow_batch_size = int(self._batch_size or DEFAULT_FLOW_BATCH_SIZE)
        self._batch_size = None
        if self.feature_extractor is None:
            self.feature_extractor = self._load_saved_feature_extractor() or self._default_feature_extractor()
        self._check_feature_extractor()
        forward_params = inspect.signature(self.model.forward).parameters
        self.model_input_names = [name for name in MODEL_INPUT_NAMES if name in forward_params]
        if not self.model_input_names:
            raise ValueError(f"{type(self.model).__name__}.forward takes none of the inputs {MODEL_INPUT_NAMES}")
        self.last_accounting = None

    # ------------------------------------------------------------------ setup
    def _load_saved_feature_extractor(self):
        """The MMAEFeatureExtractor saved beside the weights, when the model was loaded from a folder."""
        folder = getattr(self.model, "name_or_path", None) or getattr(self.model.config, "_name_or_path", None)
        if not folder or not os.path.isfile(os.path.join(os.fspath(folder), "preprocessor_config.json")):
            return None
        return MMAEFeatureExtractor.from_pretrained(folder)

    def _default_feature_extractor(self):
        """The default MMAEFeatureExtractor, cut to the model's byte layout (for a model folder without one)."""
        logger.warning(
            "no MMAEFeatureExtractor (preprocessor_config.json) beside the model: flows are cut with the "
            "default FlowOptions, which may differ from the preprocessing the model was trained with"
        )
        config = self.model.config
        names = ("num_packets", "header_bytes", "payload_bytes")
        return MMAEFeatureExtractor(flow_options={n: int(getattr(config, n)) for n in names if hasattr(config, n)})

    def _check_feature_extractor(self):
        """The extractor's byte layout must be the one the model was built for."""
        options = getattr(self.feature_extractor, "flow_options", None)
        if options is None:
            return
        options = options if isinstance(options, dict) else options.to_dict()
        config = self.model.config
        for name in ("num_packets", "header_bytes", "payload_bytes"):
            if name in options and hasattr(config, name) and int(options[name]) != int(getattr(config, name)):
                raise ValueError(
                    f"the feature extractor cuts flows with {name}={options[name]} but the model expects "
                    f"{name}={getattr(config, name)}; use the preprocessor_config.json the model was trained with"
                )

    @property
    def num_bytes(self) -> int:
        config = self.model.config
        if hasattr(config, "num_bytes"):
            return int(config.num_bytes)
        return int(config.num_packets * (config.header_bytes + config.payload_bytes))

    # ------------------------------------------------------------------ pipeline API
    def _sanitize_parameters(
        self, top_k=None, ood_threshold=None, flow_batch_size=None, errors=None, source_name=None, **kwargs
    ):
        if kwargs:
            raise TypeError(f"unknown arguments for the {TASK} pipeline: {sorted(kwargs)}")
        preprocess = {}
        if flow_batch_size is not None:
            preprocess["flow_batch_size"] = int(flow_batch_size)
        if errors is not None:
            if errors not in ("warn", "raise"):
                raise ValueError(f"errors must be 'warn' or 'raise', got {errors!r}")
            preprocess["errors"] = errors
        if source_name is not None:
            preprocess["source_name"] = source_name
        postprocess = {}
        if top_k is not None:
            if int(top_k) < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}")
            postprocess["top_k"] = int(top_k)
        if ood_threshold is not None:
            postprocess["ood_threshold"] = float(ood_threshold)
        return preprocess, {}, postprocess

    def __call__(self, inputs, *args, batch_size=None, **kwargs):
        """Classify the flows of one capture (returns a list of flow dicts) or of a list of captures (a list of
        such lists). ``batch_size`` is the number of flows per model call."""
        if batch_size is not None:
            kwargs["flow_batch_size"] = batch_size
        return super().__call__(inputs, *args, batch_size=1, **kwargs)

    def preprocess(self, inputs, flow_batch_size=None, errors="warn", source_name=None):
        """Yields batches of encoded flows (`ChunkPipeline` chunks); the last one has ``is_last=True``."""
        accounting = self._new_accounting()
        self.last_accounting = accounting
        flows = self._iter_flows(inputs, accounting, errors=errors, source_name=source_name)
        yield from self._chunks(flows, flow_batch_size or self.flow_batch_size)

    def _forward(self, chunk):
        inputs = chunk["model_inputs"]
        num_flows = len(chunk["flows"])
        if num_flows == 0:
            logits = torch.zeros(0, self.model.config.num_labels)
        else:
            logits = self.model(**inputs).logits
        return {"logits": logits, "flows": chunk["flows"], "is_last": chunk["is_last"]}

    def postprocess(self, chunk_outputs, top_k=3, ood_threshold=None):
        records = []
        for output in chunk_outputs:
            records.extend(self.postprocess_chunk(output, top_k=top_k, ood_threshold=ood_threshold))
        return records

    # ------------------------------------------------------------------ streaming API (CLI, benchmarks)
    def predict_stream(
        self,
        sources: Iterable[Any],
        batch_size: int | None = None,
        top_k: int = 3,
        ood_threshold: float | None = None,
        on_source_end=None,
        errors: str = "warn",
        timings: dict | None = None,
        keep_inputs: bool = False,
    ) -> Iterator[list[dict]]:
        """Classify many captures in bounded memory: yields one list of flow dicts per model batch.

        Flows of consecutive captures share batches (many small captures still fill a batch). Only the
        active flows of the reader and one batch are held at a time.

        Args:
            sources: paths or pcap bytes.
            on_source_end (callable, *optional*): ``on_source_end(name, accounting, error)`` after each
                capture, with its `PacketAccounting` and the error that ended it (None when it was read whole).
            timings (`dict`, *optional*): accumulates ``parse_s`` (reading, flow assembly, encoding),
                ``model_s`` (forward passes) and ``postprocess_s`` seconds.
            keep_inputs (`bool`, defaults to False): add each flow's model inputs (numpy) as ``record["_inputs"]``
                (used for explanations).
        """
        timings = timings if timings is not None else {}
        for key in ("parse_s", "model_s", "postprocess_s"):
            timings.setdefault(key, 0.0)

        def all_flows():
            for source in sources:
                accounting = self._new_accounting()
                error_holder = []
                try:
                    yield from self._iter_flows(source, accounting, errors=errors, error_holder=error_holder)
                except Exception as error:  # an unreadable input must not stop the others
                    if errors == "raise":
                        raise
                    name = _source_name(source)
                    message = str(error) if name in str(error) else f"{name}: {type(error).__name__}: {error}"
                    logger.error(message)
                    error_holder.append(message)
                if on_source_end is not None:
                    on_source_end(_source_name(source), accounting, error_holder[0] if error_holder else None)

        chunks = self._chunks(all_flows(), batch_size or self.flow_batch_size, mark_last=False)
        while True:
            start = time.perf_counter()
            chunk = next(chunks, None)
            timings["parse_s"] += time.perf_counter() - start
            if chunk is None:
                return
            if not chunk["flows"]:
                continue
            start = time.perf_counter()
            output = self.forward(chunk)
            timings["model_s"] += time.perf_counter() - start
            start = time.perf_counter()
            records = self.postprocess_chunk(output, top_k=top_k, ood_threshold=ood_threshold)
            if keep_inputs:
                inputs = {name: value.cpu().numpy() for name, value in chunk["model_inputs"].items()}
                for index, record in enumerate(records):
                    record["_inputs"] = {name: value[index] for name, value in inputs.items()}
            timings["postprocess_s"] += time.perf_counter() - start
            yield records

    def postprocess_chunk(self, output, top_k=3, ood_threshold=None) -> list[dict]:
        """Flow dicts of one model batch (``output`` as returned by `forward`)."""
        logits = output["logits"]
        flows = output["flows"]
        if len(flows) == 0:
            return []
        probs = logits.float().softmax(-1)
        k = min(int(top_k), probs.shape[-1])
        top_scores, top_ids = probs.topk(k, dim=-1)
        top_scores, top_ids = top_scores.tolist(), top_ids.tolist()
        threshold = ood_threshold if ood_threshold is not None else getattr(self.model.config, "ood_threshold", None)
        id2label: dict = self.model.config.id2label or {}
        records = []
        for meta, scores, ids in zip(flows, top_scores, top_ids):
            labels = [{"label": id2label[int(i)], "score": float(s)} for s, i in zip(scores, ids)]
            record = dict(meta)
            record["label"] = labels[0]["label"]
            record["score"] = labels[0]["score"]
            record["top_k"] = labels
            record["ood_score"] = labels[0]["score"]
            record["ood"] = None if threshold is None else bool(labels[0]["score"] < threshold)
            records.append(record)
        return records

    # ------------------------------------------------------------------ flows
    def _new_accounting(self):
        traffic = _traffic_module()
        return traffic.PacketAccounting() if traffic is not None else None

    def _iter_flows(self, source, accounting, errors="warn", source_name=None, error_holder=None):
        """Yields ``(metadata dict, flow)`` pairs for one input; the feature extractor reads or splits it."""
        if isinstance(source, dict) or isinstance(source, np.ndarray) or torch.is_tensor(source):
            source = {k: _to_numpy(v) for k, v in source.items()} if isinstance(source, dict) else _to_numpy(source)
            for flow in self.feature_extractor.iter_flows(source):
                yield _flow_metadata(flow), flow
            return
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not is_pcap_bytes(source):
                raise ValueError(
                    "bytes input must be a pcap or pcapng capture (no pcap magic number found); pass already "
                    f"extracted flows as a dict with {BYTE_COLUMN!r} or as a uint8 array instead"
                )
            source = bytes(source)
        elif not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
            if hasattr(source, BYTE_COLUMN):  # a FlowRecord
                yield _flow_metadata(source), source
                return
            raise TypeError(f"cannot classify an input of type {type(source).__name__}")
        name = source_name or _source_name(source)
        traffic = _traffic_module()
        if traffic is None:
            raise ImportError(
                f"reading the capture {name} needs the mmae-hf package (pip install . in a clone of its repository); without it this "
                "pipeline classifies already extracted flows only"
            )
        if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
            raise FileNotFoundError(f"capture {name} does not exist")
        records = self.feature_extractor.extract_flows(
            source, accounting=accounting, strict=errors == "raise", source_name=name
        )
        try:
            for record in records:
                yield _flow_metadata(record, name), record
        except traffic.PcapFormatError as error:
            if error_holder is not None:
                error_holder.append(str(error))
            if errors == "raise":
                raise
            logger.error(f"{name}: capture is damaged, kept the flows read before the damage: {error}")
            if accounting is not None and str(error) not in accounting.errors:
                accounting.errors.append(str(error))
            return
        if accounting is not None and accounting.errors:
            if error_holder is not None:
                error_holder.extend(accounting.errors)
            for message in accounting.errors:
                logger.warning(f"{name}: {message}")

    # ------------------------------------------------------------------ batching
    def _chunks(self, flows, batch_size, mark_last=True):
        """Groups ``(meta, flow)`` pairs into chunks of at most ``batch_size`` flows with their model inputs.

        With ``mark_last`` (the `ChunkPipeline` protocol) one full chunk is held back so that the final one can
        carry ``is_last=True``, and at least one (possibly empty) chunk is always yielded. Without it chunks are
        yielded as soon as they are full and none is empty.
        """
        batch = []
        pending = None
        for item in flows:
            batch.append(item)
            if len(batch) >= batch_size:
                chunk = self._chunk(batch, is_last=False)
                batch = []
                if not mark_last:
                    yield chunk
                    continue
                if pending is not None:
                    yield pending
                pending = chunk
        if batch:
            if pending is not None:
                yield pending
            yield self._chunk(batch, is_last=True)
        elif pending is not None:
            pending["is_last"] = True
            yield pending
        elif mark_last:
            yield self._chunk([], is_last=True)

    def _chunk(self, batch, is_last):
        """One chunk: the flows' metadata and the model inputs the feature extractor makes of them."""
        flows = [flow for _, flow in batch]
        if flows:
            features = self.feature_extractor(flows, return_tensors="pt")
            inputs = {name: features[name] for name in self.model_input_names}
        else:
            inputs = {BYTE_COLUMN: torch.zeros(0, self.num_bytes, dtype=torch.uint8)}
        return {"model_inputs": inputs, "flows": [meta for meta, _ in batch], "is_last": is_last}


def register_traffic_pipeline():
    """Registers the ``traffic-classification`` task with transformers' pipeline registry (idempotent)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is not None and registered.get("impl") is TrafficClassificationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=TrafficClassificationPipeline,
        pt_model=AutoModelForSequenceClassification,
        type="multimodal",
    )


def __getattr__(name):
    # moved to mmae_hf.evaluation (the one OOD calibration); still importable from here where mmae-hf is installed
    if name in ("calibrate_ood_threshold", "predict_logits", "dataset_labels"):
        try:
            from mmae_hf import evaluation
        except ImportError:
            pass
        else:
            return getattr(evaluation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TrafficClassificationPipeline",
    "register_traffic_pipeline",
    "is_pcap_bytes",
    "FLOW_FIELDS",
]
