# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""`MMAEFeatureExtractor`: the flow, byte-layout and anonymisation settings a dataset was built with, saved beside
the weights as ``preprocessor_config.json``, and the conversion of flows (pcaps, dataset rows, ``FlowRecord``s)
into model inputs.

```python
import mmae_hf
from transformers import AutoFeatureExtractor

extractor = AutoFeatureExtractor.from_pretrained("path/to/model")      # MMAEFeatureExtractor
inputs = extractor("capture.pcap", return_tensors="pt")                # one row per flow
inputs = extractor(dataset[:32], return_tensors="pt")                  # dataset rows (dict of columns)
```

Remote code: with ``register_for_auto_class`` this file is copied next to the weights and may be loaded with
``trust_remote_code=True`` where mmae-hf is not installed. It therefore imports only numpy and transformers at
module level. Converting rows and records works everywhere; reading pcaps needs the torch-free ``mmae_hf.traffic``
package (imported lazily), so pcap input without mmae-hf installed raises a clear ``ImportError``.
"""

import os
from typing import Any

import numpy as np
from transformers import BatchFeature
from transformers.feature_extraction_utils import FeatureExtractionMixin


# Mirror of `mmae_hf.traffic.FlowOptions` defaults (kept here so that this file stands alone as remote code; a test
# checks that both agree).
DEFAULT_FLOW_OPTIONS = {
    "bidirectional": True,
    "idle_timeout": 120.0,
    "active_timeout": 3600.0,
    "tcp_close": True,
    "num_packets": 5,
    "header_bytes": 80,
    "payload_bytes": 240,
    "anonymize": "default",
    "min_packets": 1,
    "drop_service_chatter": False,
    "max_packets": 0,
    "max_open_flows": 100_000,
}
NUM_FLOW_STATS = 27
MODEL_INPUT_NAMES = ["input_bytes", "packet_lengths", "packet_iats", "packet_directions", "flow_stats"]
_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")
# column name in dataset rows / FlowRecord -> model input name
_SOURCE_NAMES = {
    "input_bytes": ("input_bytes", "payload"),
    "packet_lengths": ("packet_lengths",),
    "packet_iats": ("packet_iats",),
    "packet_directions": ("packet_directions",),
    "flow_stats": ("flow_stats",),
}
_DTYPES = {
    "input_bytes": np.uint8,
    "packet_lengths": np.int32,
    "packet_iats": np.float32,
    "packet_directions": np.int8,
    "flow_stats": np.float32,
}


def _traffic():
    try:
        import mmae_hf.traffic as traffic
    except ImportError as error:
        raise ImportError(
            "reading pcap/pcapng captures needs the mmae-hf package (pip install . in a clone of its repository); without it this feature "
            "extractor converts already extracted flows (dataset rows or dicts with 'payload') only"
        ) from error
    return traffic


class MMAEFeatureExtractor(FeatureExtractionMixin):
    r"""Turns network flows into MMAE model inputs, with the preprocessing a dataset was built with.

    Args:
        flow_options (`dict`, *optional*):
            The `mmae_hf.traffic.FlowOptions` of the dataset (flow keying and timeouts, ``num_packets`` /
            ``header_bytes`` / ``payload_bytes`` byte layout, ``anonymize`` profile, ...). Missing keys take the
            defaults; unknown keys are an error.
        model_input_names (`list[str]`, *optional*):
            Inputs returned by ``__call__``; defaults to all five (``input_bytes``, ``packet_lengths``,
            ``packet_iats``, ``packet_directions``, ``flow_stats``).

    Outputs of ``__call__`` (B flows): ``input_bytes`` uint8 [B, num_packets * (header_bytes + payload_bytes)],
    ``packet_lengths`` int32 [B, num_packets], ``packet_iats`` float32 [B, num_packets], ``packet_directions`` int8
    [B, num_packets], ``flow_stats`` float32 [B, 27]. Values are raw; all scaling is done inside the model.
    """

    model_input_names = MODEL_INPUT_NAMES

    def __init__(self, flow_options: dict | None = None, model_input_names: list | None = None, **kwargs):
        super().__init__(**kwargs)
        if flow_options is not None and not isinstance(flow_options, dict):
            flow_options = flow_options.to_dict()  # a FlowOptions
        unknown = set(flow_options or {}) - set(DEFAULT_FLOW_OPTIONS)
        if unknown:
            raise ValueError(f"unknown flow_options keys {sorted(unknown)}; expected a subset of {sorted(DEFAULT_FLOW_OPTIONS)}")
        self.flow_options = {**DEFAULT_FLOW_OPTIONS, **(flow_options or {})}
        try:  # validate with the real dataclass where it is available (not needed for remote-code use)
            import mmae_hf.traffic as traffic

            traffic.FlowOptions.from_dict(self.flow_options)
        except ImportError:
            pass
        model_input_names = list(model_input_names) if model_input_names is not None else list(MODEL_INPUT_NAMES)
        bad = set(model_input_names) - set(MODEL_INPUT_NAMES)
        if bad:
            raise ValueError(f"unknown model input names {sorted(bad)}")
        self.model_input_names = model_input_names  # saved in preprocessor_config.json

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory, push_to_hub: bool = False, remote_code: bool | None = None, **kwargs):
        """Write ``preprocessor_config.json``.

        Args:
            remote_code: also copy this file and write ``auto_map`` so that ``AutoFeatureExtractor.from_pretrained(
                folder, trust_remote_code=True)`` works without mmae-hf. Default: only when the folder already holds a
                model (``config.json``); a dataset folder gets the JSON alone, because ``datasets.load_dataset``
                refuses folders that contain ``.py`` files.
        """
        if remote_code is None:
            remote_code = os.path.isfile(os.path.join(os.fspath(save_directory), "config.json"))
        if not remote_code:
            self.__dict__.pop("auto_map", None)
        self._auto_class = "AutoFeatureExtractor" if remote_code else None
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            del self._auto_class

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_auto_class", None)
        return output

    # ------------------------------------------------------------------ layout
    @property
    def num_packets(self) -> int:
        return int(self.flow_options["num_packets"])

    @property
    def num_bytes(self) -> int:
        o = self.flow_options
        return int(o["num_packets"]) * (int(o["header_bytes"]) + int(o["payload_bytes"]))

    @property
    def anonymize(self) -> str:
        return self.flow_options["anonymize"]

    def _width(self, name: str) -> int:
        return {"input_bytes": self.num_bytes, "flow_stats": NUM_FLOW_STATS}.get(name, self.num_packets)

    # ------------------------------------------------------------------ pcaps
    def get_flow_options(self):
        """The stored options as an `mmae_hf.traffic.FlowOptions` (needs mmae-hf)."""
        return _traffic().FlowOptions.from_dict(self.flow_options)

    def extract_flows(self, pcap_path_or_bytes, accounting=None, strict: bool = False, source_name: str | None = None):
        """The `FlowRecord`s of one capture, cut and anonymised exactly as the training data was."""
        traffic = _traffic()
        return traffic.iter_flows(
            pcap_path_or_bytes, self.get_flow_options(), accounting=accounting, strict=strict, source_name=source_name
        )

    # ------------------------------------------------------------------ conversion
    def __call__(self, flows: Any, return_tensors: str | None = None, **kwargs) -> BatchFeature:
        """Model inputs for a batch of flows.

        Args:
            flows: a pcap/pcapng path or its bytes (every flow of the capture), a `FlowRecord` or list of them, one
                dataset row (dict with ``payload`` or ``input_bytes`` of length ``num_bytes``), a list of rows, or a
                dict of columns (``dataset[:32]``). Rows without side-channel columns get zeros there (a classifier
                reads ``input_bytes`` only).
            return_tensors: None / "np" (numpy arrays) or "pt" (torch tensors).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        columns = self._columns(flows)
        return BatchFeature({name: columns[name] for name in self.model_input_names}, tensor_type=return_tensors)

    def _columns(self, flows) -> dict:
        if isinstance(flows, (str, os.PathLike)) or (
            isinstance(flows, (bytes, bytearray, memoryview)) and bytes(flows[:4]) in _PCAP_MAGICS
        ):
            return self._stack(list(self.extract_flows(flows)))
        if isinstance(flows, dict):
            key = "input_bytes" if "input_bytes" in flows else "payload"
            if key not in flows:
                raise ValueError("a flow dict needs a 'payload' or 'input_bytes' entry")
            first = np.asarray(flows[key])
            if first.ndim == 1 and first.dtype != object and (len(first) == 0 or np.isscalar(flows[key][0])):
                return self._stack([flows])  # one row
            return self._from_columns(flows)
        if hasattr(flows, "payload"):
            return self._stack([flows])
        if isinstance(flows, (list, tuple)):
            return self._stack(list(flows))
        raise TypeError(f"cannot turn a {type(flows).__name__} into MMAE inputs")

    def _get(self, item, name):
        for source in _SOURCE_NAMES[name]:
            value = item.get(source) if isinstance(item, dict) else getattr(item, source, None)
            if value is not None:
                return value
        return None

    def _stack(self, items: list) -> dict:
        out = {}
        for name in MODEL_INPUT_NAMES:
            width = self._width(name)
            arr = np.zeros((len(items), width), dtype=_DTYPES[name])
            for i, item in enumerate(items):
                value = self._get(item, name)
                if value is None:
                    if name == "input_bytes":
                        raise ValueError(f"flow {i} has no 'payload' / 'input_bytes'")
                    continue
                value = np.asarray(value)
                if value.shape != (width,):
                    raise ValueError(f"flow {i}: {name} has shape {value.shape}, expected ({width},) for {self._layout()}")
                arr[i] = value
            out[name] = arr
        return out

    def _from_columns(self, columns: dict) -> dict:
        out = {}
        n = None
        for name in MODEL_INPUT_NAMES:
            width = self._width(name)
            value = None
            for source in _SOURCE_NAMES[name]:
                if source in columns:
                    value = columns[source]
                    break
            if value is None:
                out[name] = None
                continue
            arr = np.asarray(value, dtype=_DTYPES[name]) if not isinstance(value, np.ndarray) else value.astype(_DTYPES[name])
            if arr.ndim != 2 or arr.shape[1] != width:
                raise ValueError(f"column {name} has shape {arr.shape}, expected (batch, {width}) for {self._layout()}")
            n = len(arr) if n is None else n
            if len(arr) != n:
                raise ValueError(f"column {name} has {len(arr)} rows, expected {n}")
            out[name] = arr
        for name, arr in out.items():
            if arr is None:
                out[name] = np.zeros((n, self._width(name)), dtype=_DTYPES[name])
        return out

    def _layout(self) -> str:
        o = self.flow_options
        return f"num_packets={o['num_packets']}, header_bytes={o['header_bytes']}, payload_bytes={o['payload_bytes']}"


__all__ = ["MMAEFeatureExtractor"]
