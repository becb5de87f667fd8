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
``trust_remote_code=True`` where mmae-hf is not installed. It therefore imports only numpy, transformers and its
single-dot sibling `data_contract` (copied with it) at module level. Converting rows and records works everywhere; reading pcaps needs the torch-free ``mmae_hf.traffic``
package (imported lazily), so pcap input without mmae-hf installed raises a clear ``ImportError``.
"""

import os
from typing import Any

import numpy as np
from transformers import BatchFeature
from transformers.feature_extraction_utils import FeatureExtractionMixin

from .data_contract import (
    BYTE_COLUMN,
    DEFAULT_FLOW_OPTIONS,
    FLOW_ARRAY_COLUMNS,
    FLOW_METADATA_FIELDS,
    LEGACY_COLUMN_NAMES,
    MODEL_INPUT_NAMES,
    column_widths,
    is_capture_bytes,
)


# the model inputs are the data contract's array columns: name -> dtype; old dict keys are still accepted
_DTYPES = {name: np.dtype(dtype) for name, dtype in FLOW_ARRAY_COLUMNS.items()}
_SOURCE_NAMES = {name: (name, *(old for old, new in LEGACY_COLUMN_NAMES.items() if new == name)) for name in _DTYPES}


def _traffic():
    try:
        import mmae_hf.traffic as traffic
    except ImportError as error:
        raise ImportError(
            "reading pcap/pcapng captures needs the mmae-hf package (pip install . in a clone of its repository); without it this feature "
            "extractor converts already extracted flows (dataset rows or dicts with 'input_bytes') only"
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

    model_input_names = list(MODEL_INPUT_NAMES)

    def __init__(self, flow_options: dict | None = None, model_input_names: list | None = None, **kwargs):
        super().__init__(**kwargs)
        if flow_options is not None and not isinstance(flow_options, dict):
            flow_options = flow_options.to_dict()  # a FlowOptions
        unknown = set(flow_options or {}) - set(DEFAULT_FLOW_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown flow_options keys {sorted(unknown)}; expected a subset of {sorted(DEFAULT_FLOW_OPTIONS)}"
            )
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
        self._auto_class = "AutoFeatureExtractor" if remote_code else None  # type: ignore[assignment]
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
        o = self.flow_options
        return column_widths(int(o["num_packets"]), int(o["header_bytes"]), int(o["payload_bytes"]))[name]

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

    def iter_flows(self, flows: Any, accounting=None, strict: bool = False, source_name: str | None = None):
        """One item per flow of anything `__call__` takes: the `FlowRecord`s of a capture (path or bytes, read with
        the stored options), the given records or rows, or one row dict per flow of a dict of columns or a uint8 array
        ``[N, num_bytes]`` (model inputs and flow metadata such as ``src_port`` are kept in the rows)."""
        if isinstance(flows, (str, os.PathLike)) or (
            isinstance(flows, (bytes, bytearray, memoryview)) and is_capture_bytes(flows)
        ):
            yield from self.extract_flows(flows, accounting=accounting, strict=strict, source_name=source_name)
        elif isinstance(flows, dict):
            yield from self._column_rows(flows)
        elif isinstance(flows, np.ndarray):
            yield from self._column_rows({BYTE_COLUMN: flows})
        elif isinstance(flows, (list, tuple)):
            yield from flows
        elif hasattr(flows, BYTE_COLUMN):  # a FlowRecord
            yield flows
        else:
            raise TypeError(f"cannot turn a {type(flows).__name__} into MMAE inputs")

    def _column_rows(self, columns: dict):
        """Row dicts of a dict of columns (one row when the byte entry is a single flow)."""
        key = next((source for source in _SOURCE_NAMES[BYTE_COLUMN] if source in columns), None)
        if key is None:
            raise ValueError(f"a flow dict needs an {BYTE_COLUMN!r} entry with the flow bytes")
        if self._is_one_row(columns[key]):
            yield columns
            return
        kept = [
            name for name in columns if name in FLOW_METADATA_FIELDS or name in LEGACY_COLUMN_NAMES or name in _DTYPES
        ]
        for index in range(len(columns[key])):
            yield {name: columns[name][index] for name in kept}

    @staticmethod
    def _is_one_row(values) -> bool:
        first = np.asarray(values)
        return first.ndim == 1 and first.dtype != object and (len(first) == 0 or np.isscalar(values[0]))

    # ------------------------------------------------------------------ conversion
    def __call__(self, flows: Any, return_tensors: str | None = None, **kwargs) -> BatchFeature:
        """Model inputs for a batch of flows.

        Args:
            flows: a pcap/pcapng path or its bytes (every flow of the capture), a `FlowRecord` or list of them, one
                dataset row (dict with ``input_bytes`` of length ``num_bytes``), a list of rows, or a dict of columns
                (``dataset[:32]``). Rows without side-channel columns get zeros there (a classifier reads
                ``input_bytes`` only).
            return_tensors: None / "np" (numpy arrays) or "pt" (torch tensors).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        columns = self._columns(flows)
        return BatchFeature({name: columns[name] for name in self.model_input_names}, tensor_type=return_tensors)

    def _columns(self, flows) -> dict:
        if isinstance(flows, dict):
            key = next((source for source in _SOURCE_NAMES[BYTE_COLUMN] if source in flows), None)
            if key is None:
                raise ValueError(f"a flow dict needs an {BYTE_COLUMN!r} entry with the flow bytes")
            if self._is_one_row(flows[key]):
                return self._stack([flows])
            return self._from_columns(flows)
        return self._stack(list(self.iter_flows(flows)))

    def _get(self, item, name):
        for source in _SOURCE_NAMES[name]:
            value = item.get(source) if isinstance(item, dict) else getattr(item, source, None)
            if value is not None:
                return value
        return None

    def _stack(self, items: list) -> dict:
        out: dict[str, np.ndarray] = {}
        for name in MODEL_INPUT_NAMES:
            width = self._width(name)
            arr = np.zeros((len(items), width), dtype=_DTYPES[name])
            for i, item in enumerate(items):
                value = self._get(item, name)
                if value is None:
                    if name == BYTE_COLUMN:
                        raise ValueError(f"flow {i} has no {BYTE_COLUMN!r}")
                    continue
                value = np.asarray(value)
                if value.shape != (width,):
                    raise ValueError(
                        f"flow {i}: {name} has shape {value.shape}, expected ({width},) for {self._layout()}"
                    )
                arr[i] = value
            out[name] = arr
        return out

    def _from_columns(self, columns: dict) -> dict:
        out: dict[str, np.ndarray | None] = {}
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
            arr = (
                np.asarray(value, dtype=_DTYPES[name])
                if not isinstance(value, np.ndarray)
                else value.astype(_DTYPES[name])
            )
            if arr.ndim != 2 or arr.shape[1] != width:
                raise ValueError(f"column {name} has shape {arr.shape}, expected (batch, {width}) for {self._layout()}")
            n = len(arr) if n is None else n
            if len(arr) != n:
                raise ValueError(f"column {name} has {len(arr)} rows, expected {n}")
            out[name] = arr
        for name, column in out.items():
            if column is None:
                out[name] = np.zeros((n or 0, self._width(name)), dtype=_DTYPES[name])
        return out

    def _layout(self) -> str:
        o = self.flow_options
        return f"num_packets={o['num_packets']}, header_bytes={o['header_bytes']}, payload_bytes={o['payload_bytes']}"


__all__ = ["MMAEFeatureExtractor"]
