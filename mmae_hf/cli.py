"""Command-line entry points: ``mmae-classify`` and ``mmae-shortcut-report``.

``mmae-classify CAPTURE... --model M [--output flows.csv|.jsonl|.parquet]`` classifies every flow of the
captures (files or folders of .pcap / .pcapng / .cap) in bounded memory: flows stream from the pcap reader,
are classified in batches and written out batch by batch. A summary (flows per predicted label, OOD count,
packets skipped and why, per-file errors) goes to stdout and to ``<output>.summary.json``. Without
``--output`` the flows are written to stdout as JSON lines and the summary to stderr.

Exit status: 0 when every capture was read completely (also when it held no IP flow), 1 when a capture was
missing or damaged (the flows read before the damage are still written), 2 on a bad argument or input (a model
path or Hub id that leads to no model, a model without a trained classification head, an unwritable output): one
``mmae-classify: error: ...`` line on stderr, the traceback only with ``--debug``.

``mmae-shortcut-report --model M --dataset DIR [--split test]`` re-evaluates a classifier with the headers,
the addresses, the ports or the payload zeroed and prints how much accuracy and macro-F1 drop.
"""

import csv
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .data_contract import CAPTURE_SUFFIXES, FLOW_METADATA_FIELDS
from .evaluation import json_default

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


# ---------------------------------------------------------------------- inputs


def expand_captures(paths: list[str]) -> list[str]:
    """Files as given; folders expanded to their capture files (recursively, sorted)."""
    captures = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                str(p) for p in Path(path).rglob("*") if p.is_file() and p.suffix.lower() in CAPTURE_SUFFIXES
            )
            captures.extend(found)
        else:
            captures.append(path)
    return captures


def load_pipeline(
    model: str,
    device: str | None = None,
    batch_size: int = 256,
    allow_untrained_head: bool = False,
    allow_mismatched_weights: bool = False,
):
    """The traffic-classification pipeline for a saved model folder or Hub id, with its feature extractor.

    Raises `ModelSourceError` when ``model`` leads to no saved model, `UntrainedHeadError` when the model's
    classification head was never trained (unless ``allow_untrained_head``), and
    `mmae_hf.weight_check.WeightsMismatchError` for a damaged weight file or a ``config.json`` that does not fit the
    encoder weights (unless ``allow_mismatched_weights``).
    """
    import torch

    from mmae_hf.pipeline_traffic import TrafficClassificationPipeline

    classifier = load_classifier(
        model, allow_untrained_head=allow_untrained_head, allow_mismatched_weights=allow_mismatched_weights
    )
    feature_extractor = None
    try:
        from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor

        if not os.path.isdir(model) or os.path.isfile(os.path.join(model, "preprocessor_config.json")):
            feature_extractor = MMAEFeatureExtractor.from_pretrained(model)
    except (OSError, ImportError) as error:
        print(f"warning: no feature extractor for {model} ({error}); using the default flow options", file=sys.stderr)
    return TrafficClassificationPipeline(
        model=classifier,
        feature_extractor=feature_extractor,
        device=torch.device(device) if device else torch.device("cpu"),
        batch_size=batch_size,
        task="traffic-classification",
        allow_untrained_head=allow_untrained_head,
        allow_mismatched_weights=allow_mismatched_weights,
    )


def load_classifier(model: str, allow_untrained_head: bool = False, allow_mismatched_weights: bool = False):
    """``AutoModelForSequenceClassification`` from a folder or Hub id, with the checks of `mmae_hf.checks` (the
    source, the head: a local folder is judged by its config.json before anything loads) and of
    `mmae_hf.weight_check` (weights that fit the config)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from mmae_hf import register_auto_classes
    from mmae_hf.checks import check_model_source, hub_load_error, require_trained_head
    from mmae_hf.weight_check import load_checked

    register_auto_classes()
    check_model_source(model, "--model")
    require_trained_head(model, model, allow_untrained_head, override="--allow-untrained-head")
    try:
        classifier = load_checked(
            AutoModelForSequenceClassification,
            model,
            dtype=torch.float32,
            allow_mismatched_weights=allow_mismatched_weights,
        )
    except OSError as error:  # a Hub id that is not there, no network, no access
        raise hub_load_error(model, error, "--model") from error
    require_trained_head(classifier, model, allow_untrained_head, override="--allow-untrained-head")  # a Hub id
    return classifier


def check_device(device: str) -> str:
    """``device`` if torch can use it here, else ValueError (before any model is loaded)."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device}: {error_line_of(error)}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def error_line_of(error) -> str:
    from mmae_hf.checks import error_line

    return error_line(error)


# ---------------------------------------------------------------------- outputs


def flat_record(record: dict[str, Any], top_k: int) -> dict[str, Any]:
    """One flow as flat columns (for CSV / parquet): metadata, label, score, ood, then label_i / score_i."""
    row = {field: record.get(field) for field in FLOW_METADATA_FIELDS}
    row.update(label=record["label"], score=record["score"], ood=record["ood"], ood_score=record["ood_score"])
    for i in range(top_k):
        entry = record["top_k"][i] if i < len(record["top_k"]) else {"label": None, "score": None}
        row[f"label_{i + 1}"] = entry["label"]
        row[f"score_{i + 1}"] = entry["score"]
    return row


class FlowWriter:
    """Writes flow records batch by batch to CSV, JSON lines or parquet (one row group per batch)."""

    def __init__(self, path: str | None, top_k: int):
        self.path = path
        self.top_k = top_k
        self.count = 0
        self._file = None
        self._parquet = None
        if path is None:
            self.format = "jsonl"
            self._file = sys.stdout
            return
        suffix = Path(path).suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise ValueError(f"--output {path}: unknown format {suffix!r}; use one of {sorted(OUTPUT_FORMATS)}")
        self.format = OUTPUT_FORMATS[suffix]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet":
            import pyarrow.parquet as pq

            self._schema = self._arrow_schema()
            self._parquet = pq.ParquetWriter(path, self._schema)
        else:
            self._file = open(path, "w", newline="" if self.format == "csv" else None)
            if self.format == "csv":
                columns = list(flat_record(_EMPTY_RECORD, top_k))
                self._csv = csv.DictWriter(self._file, fieldnames=columns)
                self._csv.writeheader()

    def _arrow_schema(self):
        import pyarrow as pa

        fields = [
            ("source_file", pa.string()),
            ("src_ip", pa.string()),
            ("src_port", pa.int32()),
            ("dst_ip", pa.string()),
            ("dst_port", pa.int32()),
            ("protocol", pa.int16()),
            ("start_time", pa.float64()),
            ("end_time", pa.float64()),
            ("packet_count", pa.int64()),
            ("byte_count", pa.int64()),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("ood", pa.bool_()),
            ("ood_score", pa.float64()),
        ]
        for i in range(self.top_k):
            fields += [(f"label_{i + 1}", pa.string()), (f"score_{i + 1}", pa.float64())]
        return pa.schema(fields)

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self.count += len(records)
        if self.format == "jsonl":
            for record in records:
                self._file.write(json.dumps(record, default=json_default) + "\n")
            self._file.flush()
        elif self.format == "csv":
            self._csv.writerows(flat_record(r, self.top_k) for r in records)
        else:
            import pyarrow as pa

            rows = [flat_record(r, self.top_k) for r in records]
            self._parquet.write_table(pa.Table.from_pylist(rows, schema=self._schema))

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        elif self._file is not None and self._file is not sys.stdout:
            self._file.close()


_EMPTY_RECORD = {"label": None, "score": None, "ood": None, "ood_score": None, "top_k": []}


# ---------------------------------------------------------------------- mmae-classify


def build_classify_parser():
    from mmae_hf.argparsing import ArgumentParser

    parser = ArgumentParser(
        prog="mmae-classify",
        description="Classify every flow of pcap/pcapng captures with an MMAE model (streaming, bounded memory).",
    )
    parser.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files or folders of captures")
    parser.add_argument("--model", required=True, help="saved model folder or Hub id (with preprocessor_config.json)")
    parser.add_argument("--output", help="flows.csv | flows.jsonl | flows.parquet (default: JSON lines on stdout)")
    parser.add_argument("--batch-size", type=int, default=256, help="flows per model call")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--top-k", type=int, default=3, help="labels reported per flow")
    parser.add_argument("--ood-threshold", type=float, help="override the model's calibrated config.ood_threshold")
    parser.add_argument("--explain", metavar="DIR", help="write byte attributions (.npy/.json/.png) of flows to DIR")
    parser.add_argument("--explain-limit", type=int, default=20, help="explain at most this many flows")
    parser.add_argument("--explain-steps", type=int, default=32, help="integrated-gradients steps")
    parser.add_argument(
        "--explain-method",
        choices=("ig", "rollout"),
        default="ig",
        help="ig: integrated gradients of the predicted class per byte (default); rollout: attention "
        "rollout of the CLS token (class-agnostic, token resolution, one forward pass)",
    )
    parser.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="classify even with a model whose classification head was never trained (a pre-training "
        "folder, a bare encoder): its labels are random",
    )
    parser.add_argument(
        "--allow-mismatched-weights",
        action="store_true",
        help="load the model even when its config.json does not fit its encoder weights",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (bars are drawn only when stderr is a terminal anyway)",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def classify_main(argv: list[str] | None = None) -> int:
    from mmae_hf.checks import run_main

    from mmae_hf.traffic.atomic import run_interruptible

    parser = build_classify_parser()
    args = parser.parse_args(argv)
    # Ctrl-C / SIGTERM: one line, exit 130 / 143 (the output is closed on the way out)
    return run_interruptible(
        lambda: run_main("mmae-classify", lambda: _classify(parser, args), debug=args.debug),
        "mmae-classify",
        "the flows classified so far are in the output",
    )


def _classify(parser, args) -> int:
    if args.batch_size < 1 or args.top_k < 1 or args.explain_limit < 0 or args.explain_steps < 1:
        parser.error("--batch-size, --top-k and --explain-steps must be >= 1, --explain-limit >= 0")
    if args.ood_threshold is not None and not 0.0 <= args.ood_threshold <= 1.0:
        parser.error(f"--ood-threshold {args.ood_threshold}: must be a probability in [0, 1]")
    if args.output is not None and Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output must end in one of {sorted(OUTPUT_FORMATS)}")
    log = sys.stdout if args.output else sys.stderr  # keep stdout clean when it carries the flows

    captures = expand_captures(args.captures)
    if not captures:
        parser.error("no capture files found in " + ", ".join(args.captures))
    from tqdm.auto import tqdm

    from mmae_hf.progress import progress_wanted, set_library_progress_bars
    from mmae_hf.traffic import PacketAccounting

    show_progress = progress_wanted(args.no_progress)
    set_library_progress_bars(show_progress)
    check_device(args.device)
    if args.output:  # an unwritable output fails now, not after the model is loaded
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    # a missing model, an untrained head, damaged or mismatched weights: ValueError / OSError, one line, exit 2
    pipe = load_pipeline(
        args.model,
        device=args.device,
        batch_size=args.batch_size,
        allow_untrained_head=args.allow_untrained_head,
        allow_mismatched_weights=args.allow_mismatched_weights,
    )
    writer = FlowWriter(args.output, args.top_k)
    per_file: list[dict[str, Any]] = []
    total = PacketAccounting()
    labels: Counter = Counter()
    ood_count = 0
    timings: dict[str, float] = {}
    explained = 0
    # counts flows (a single huge capture still shows movement); files done go in the postfix
    progress = tqdm(unit=" flows", desc="classifying", disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
    files_done = [0]

    def file_done():
        files_done[0] += 1
        progress.set_postfix(files=f"{files_done[0]}/{len(captures)}", refresh=False)

    def on_source_end(name, accounting, error):
        entry = {"file": name, **(accounting.to_dict() if accounting is not None else {})}
        if error is not None and error not in entry.get("errors", []):
            entry.setdefault("errors", []).append(error)
        per_file.append(entry)
        if accounting is not None:
            total.merge(accounting)
        for message in entry.get("errors", []):
            print(f"error: {name}: {message}" if name not in message else f"error: {message}", file=sys.stderr)
        file_done()

    def sources():
        for path in captures:
            if not os.path.isfile(path):
                from mmae_hf.traffic.pcapio import special_file_kind

                kind = special_file_kind(path)  # a FIFO would block the reader forever: never opened
                message = f"{path}: not a regular file ({kind}), not read" if kind else f"{path}: no such capture file"
                per_file.append({"file": path, "flows": 0, "errors": [message]})
                print(f"error: {message}", file=sys.stderr)
                file_done()
                continue
            yield path

    start = time.perf_counter()
    try:
        stream = pipe.predict_stream(
            sources(),
            batch_size=args.batch_size,
            top_k=args.top_k,
            ood_threshold=args.ood_threshold,
            on_source_end=on_source_end,
            timings=timings,
            keep_inputs=bool(args.explain),
        )
        for records in stream:
            if args.explain and explained < args.explain_limit:
                explained += _explain_batch(pipe, records, args, explained)
            for record in records:
                record.pop("_inputs", None)
                labels[record["label"]] += 1
                ood_count += bool(record["ood"])
            writer.write(records)
            progress.update(len(records))
    finally:
        writer.close()
        progress.close()
    seconds = time.perf_counter() - start

    threshold = (
        args.ood_threshold if args.ood_threshold is not None else getattr(pipe.model.config, "ood_threshold", None)
    )
    errors = [{"file": f["file"], "error": message} for f in per_file for message in f.get("errors", [])]
    summary = {
        "model": args.model,
        "output": args.output,
        "files": len(captures),
        "files_with_errors": sum(1 for f in per_file if f.get("errors")),
        "flows": writer.count,
        "flows_per_label": dict(labels.most_common()),
        "ood_threshold": threshold,
        "ood_flows": ood_count if threshold is not None else None,
        "packets_read": total.packets_read,
        "packets_in_flows": total.packets_in_flows,
        "packets_skipped": dict(sorted(total.skipped.items())),
        "errors": errors,
        "explained_flows": explained,
        "seconds": round(seconds, 3),
        "flows_per_second": round(writer.count / seconds, 2) if seconds > 0 else None,
        "time_split_seconds": {k: round(v, 3) for k, v in timings.items()},
        "per_file": per_file,
    }
    print(format_summary(summary), file=log)
    if args.output:
        summary_path = args.output + ".summary.json"
        Path(summary_path).write_text(json.dumps(summary, indent=2, default=json_default) + "\n")
        print(f"summary written to {summary_path}", file=log)
    return 1 if errors else 0


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"classified {summary['flows']} flows from {summary['files']} capture(s) in {summary['seconds']:.1f} s"]
    if summary["flows"] == 0:
        lines.append("no TCP/UDP flow found in the input")
    for label, count in summary["flows_per_label"].items():
        lines.append(f"  {label:<24} {count:>8}")
    if summary["ood_flows"] is None:
        lines.append("out-of-distribution: not flagged (the model has no calibrated config.ood_threshold)")
    else:
        lines.append(f"out-of-distribution (max prob < {summary['ood_threshold']:.4f}): {summary['ood_flows']} flows")
    skipped = summary["packets_skipped"]
    lines.append(
        f"packets: {summary['packets_read']} read, {summary['packets_in_flows']} in flows, "
        f"{sum(skipped.values())} skipped"
        + (": " + ", ".join(f"{k} {v}" for k, v in skipped.items()) if skipped else "")
    )
    if summary["errors"]:
        lines.append(f"{summary['files_with_errors']} capture(s) with errors (flows read before the error are kept):")
        lines.extend(
            f"  {e['error']}" if e["file"] in e["error"] else f"  {e['file']}: {e['error']}" for e in summary["errors"]
        )
    return "\n".join(lines)


def _explain_batch(pipe, records, args, already: int) -> int:
    """Integrated-gradients explanations for the first flows of a batch, up to ``--explain-limit`` in total."""
    import numpy as np

    from mmae_hf.explain import attention_rollout, integrated_gradients, write_explanation

    chosen = records[: max(0, args.explain_limit - already)]
    if not chosen:
        return 0
    config = pipe.model.config
    input_bytes = np.stack([r["_inputs"]["input_bytes"] for r in chosen])
    label2id = {str(v): int(k) for k, v in config.id2label.items()}
    targets = [label2id[str(r["label"])] for r in chosen]
    if args.explain_method == "rollout":
        attributions, deltas, method = (
            attention_rollout(pipe.model, input_bytes),
            [None] * len(chosen),
            "attention_rollout",
        )
    else:
        attributions, deltas = integrated_gradients(pipe.model, input_bytes, target=targets, steps=args.explain_steps)
        method = "integrated_gradients"
    for offset, record in enumerate(chosen):
        lengths = record["_inputs"].get("packet_lengths")
        write_explanation(
            args.explain,
            f"flow_{already + offset:05d}",
            attributions[offset],
            input_bytes[offset],
            flow={k: v for k, v in record.items() if k != "_inputs"},
            explained_label=record["label"],
            delta=None if deltas[offset] is None else float(deltas[offset]),
            method=method,
            packet_lengths=None if lengths is None else [int(x) for x in lengths],
            num_packets=int(config.num_packets),
            header_bytes=int(config.header_bytes),
            payload_bytes=int(config.payload_bytes),
        )
    return len(chosen)


# ---------------------------------------------------------------------- mmae-shortcut-report


def load_dataset_split(path: str, split: str):
    """A split of a dataset folder (``save_to_disk`` output or parquet files) or Hub id."""
    from .traffic.loading import load_traffic_dataset

    if not Path(path).exists():
        raise FileNotFoundError(f"--dataset {path}: no such dataset folder")
    loaded = load_traffic_dataset(path)  # the one opener: legacy columns renamed, splits checked against the report
    if hasattr(loaded, "keys"):  # a DatasetDict
        if split not in loaded:
            raise ValueError(f"--split {split}: dataset {path} has no such split; it has {', '.join(sorted(loaded))}")
        return loaded[split]
    return loaded


def preprocessing_mismatch(model: str, dataset: str) -> dict[str, Any]:
    """Flow options that differ between the model's and the dataset's preprocessor_config.json ({} if either
    is missing): ``{option: {"model": value, "dataset": value}}``. An option missing from a config (written before
    the option existed) counts as its `FlowOptions` default."""
    from .traffic import FlowOptions

    defaults = FlowOptions().to_dict()
    options = []
    for folder in (model, dataset):
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return {}
        options.append({**defaults, **(json.loads(path.read_text()).get("flow_options") or {})})
    model_options, data_options = options
    return {
        key: {"model": model_options.get(key), "dataset": data_options.get(key)}
        for key in sorted(set(model_options) | set(data_options))
        if model_options.get(key) != data_options.get(key)
    }


def shortcut_report_main(argv: list[str] | None = None) -> int:
    from mmae_hf.argparsing import ArgumentParser
    from mmae_hf.checks import run_main

    parser = ArgumentParser(
        prog="mmae-shortcut-report",
        description="Re-evaluate a classifier with headers, addresses, ports or payload zeroed, to see what it "
        "relies on.",
    )
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument("--dataset", required=True, metavar="DIR", help="dataset folder (save_to_disk or parquet)")
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-flows", type=int, help="evaluate only the first N flows of the split")
    parser.add_argument("--output", help="report JSON (default: shortcut_report_<split>.json)")
    parser.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="report on a model whose classification head was never trained (meaningless scores)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.max_flows is not None and args.max_flows < 1):
        parser.error("--batch-size and --max-flows must be >= 1")
    from mmae_hf.traffic.atomic import run_interruptible

    return run_interruptible(
        lambda: run_main("mmae-shortcut-report", lambda: _shortcut_report(args), debug=args.debug),
        "mmae-shortcut-report",
        "no report was written",
    )


def _shortcut_report(args) -> int:
    from mmae_hf.explain import format_shortcut_report, shortcut_report
    from mmae_hf.progress import progress_wanted, set_library_progress_bars

    set_library_progress_bars(progress_wanted(args.no_progress))
    check_device(args.device)
    model = load_classifier(args.model, allow_untrained_head=args.allow_untrained_head).to(args.device)
    split = load_dataset_split(args.dataset, args.split)
    if args.max_flows is not None:
        split = split.select(range(min(args.max_flows, len(split))))
    if len(split) == 0:
        raise ValueError(f"--split {args.split}: the split of {args.dataset} is empty")
    mismatch = preprocessing_mismatch(args.model, args.dataset)
    if mismatch:
        print(
            f"warning: the dataset was built with other flow options than the model's preprocessor_config.json: "
            f"{mismatch}",
            file=sys.stderr,
        )
    report = shortcut_report(model, split, batch_size=args.batch_size, device=args.device)
    report.update(model=args.model, dataset=args.dataset, split=args.split, preprocessing_mismatch=mismatch)
    print(format_shortcut_report(report))
    output = args.output or f"shortcut_report_{args.split}.json"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(classify_main())
