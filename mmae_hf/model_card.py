"""Model cards for fine-tuned MMAE classifiers, filled from the fine-tuning results.

`build_finetuned_model_card(summary, ...)` turns the summary that `run_finetuning` returns into a
`huggingface_hub.ModelCard`: YAML metadata (license, library, ``pipeline_tag: traffic-classification`` (the task
the package registers, also named in the model's ``config.json`` under ``custom_pipelines``), tags, base model,
datasets and the ``model-index`` with test accuracy, macro-F1 and weighted-F1 from `EvalResult`s) plus a Markdown
body rendered from ``mmae_hf/templates/mmae_classifier.md`` (how to install and use it, data, preprocessing /
anonymisation profile, training recipe, results table with optional baselines, per-class scores, OOD threshold,
limitations).

`build_pretraining_model_card(folder)` writes the card of a pre-training folder (what ``train/pretrain.py``
leaves): the corpus, steps, flows seen, final loss components and the curves, from the files beside the weights.
"""

import json
import re
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = TEMPLATE_DIR / "mmae_classifier.md"
PRETRAINING_TEMPLATE = TEMPLATE_DIR / "mmae_pretrained.md"
TASK = "traffic-classification"  # = mmae_hf.pipeline_traffic.TASK (not imported: that module needs torch)
TAGS = ["mmae", "network-traffic", "encrypted-traffic-classification", "masked-autoencoder"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_repo_id(value: str | None) -> bool:
    """True for ``owner/name`` strings that are not an existing local path (those are safe to publish)."""
    return bool(value) and _REPO_ID.match(value) is not None and not Path(value).exists()


def describe_preprocessing(feature_extractor_config: dict | None) -> str:
    """Markdown lines describing the flow-extraction and anonymisation settings of the feature extractor."""
    if not feature_extractor_config:
        return (
            "No `preprocessor_config.json` was available at training time, so the flow-extraction and "
            "anonymisation settings are not recorded with this model. Treat inputs with care."
        )
    options = feature_extractor_config.get("flow_options", feature_extractor_config)
    lines = []
    profile = options.get("anonymize")
    if profile is not None:
        lines.append(f"- Anonymisation profile: **{profile}**")
    direction = options.get("bidirectional")
    if direction is not None:
        lines.append(
            f"- Flows: {'bidirectional (both directions of a connection form one flow)' if direction else 'unidirectional 5-tuples'}"
        )
    layout = [options.get(k) for k in ("num_packets", "header_bytes", "payload_bytes")]
    if all(v is not None for v in layout):
        n, h, p = layout
        lines.append(
            f"- Input bytes: first {n} packets x ({h} header bytes from the IP header on + {p} L4-payload "
            f"bytes) = {n * (h + p)} bytes, zero-padded"
        )
    for key, text in (
        ("idle_timeout", "idle timeout (s)"),
        ("active_timeout", "active timeout (s)"),
        ("tcp_close", "end flows at TCP FIN/RST"),
        ("min_packets", "minimum packets per flow"),
        ("drop_service_chatter", "drop DNS/DHCP/NTP/... service flows"),
        ("max_packets", "packets kept per flow (0: all)"),
    ):
        if key in options:
            lines.append(f"- {text}: {options[key]}")
    shown = {
        "anonymize",
        "bidirectional",
        "num_packets",
        "header_bytes",
        "payload_bytes",
        "idle_timeout",
        "active_timeout",
        "tcp_close",
        "min_packets",
        "drop_service_chatter",
        "max_packets",
    }
    rest = {
        k: v
        for k, v in options.items()
        if k not in shown
        and not k.startswith("_")
        and k not in ("feature_extractor_type", "processor_class", "model_input_names")
    }
    if rest:
        lines.append("- Other settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(rest.items())))
    return "\n".join(lines) if lines else "Feature extractor settings: defaults."


def publishable_name(name: str | None) -> str | None:
    """A Hub repo id as is; a local path as its folder name (never a path of the training machine); None as None."""
    if not name:
        return None
    if is_hub_repo_id(name):
        return name
    if Path(name).exists() or str(name).startswith(("/", "./", "../", "~")):
        return Path(name).expanduser().resolve().name
    return name


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _baseline_rows(baselines: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    rows = []
    for entry in baselines or []:
        test = entry.get("test", entry)
        rows.append(
            {
                "name": entry["name"],
                **{
                    k: _fmt(test.get(k))
                    for k in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")
                },
            }
        )
    return rows


def build_finetuned_model_card(
    summary: dict[str, Any],
    dataset_name: str,
    feature_extractor_config: dict | None = None,
    config=None,
    baselines: list[dict[str, Any]] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    template_path: str | Path | None = None,
    base_model: str | None = None,
):
    """Render the model card of a fine-tuned classifier.

    Args:
        summary: the dict returned by `mmae_hf.training.finetuning.run_finetuning` (needs ``test``,
            ``validation``, ``label_names``, ``num_rows``, ``hyperparameters`` and the OOD fields).
        dataset_name: dataset repo id (goes into the ``datasets:`` metadata when it is one) or a plain name.
        feature_extractor_config: the saved ``preprocessor_config.json`` as a dict (for the preprocessing section).
        config: the model config or its ``config.json`` dict (for the architecture line); optional.
        baselines: extra rows for the results table, each ``{"name": ..., "test": {accuracy, macro_f1, ...}}``.
        repo_id: where the model is (or will be) published, used in the usage snippet.
        template_path: a Jinja Markdown template; defaults to ``mmae_hf/templates/mmae_classifier.md``.
        base_model: Hub repo id of the pre-trained encoder for the ``base_model`` metadata; default: the
            summary's ``pretrained`` when that is a repo id (a local folder cannot be named there).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    template = Path(template_path) if template_path else DEFAULT_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"model card template {template} not found (pass template_path=...)")
    model_name = summary["model_name"]
    test, validation = summary["test"], summary["validation"]
    pretrained = summary.get("pretrained")
    base_model = base_model or summary.get("base_model") or (pretrained if is_hub_repo_id(pretrained) else None)
    dataset_name = publishable_name(dataset_name)
    dataset_type = (
        dataset_name
        if is_hub_repo_id(dataset_name)
        else re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_name).strip("-") or "traffic"
    )

    def result(metric_type, value, name, args=None):
        return EvalResult(
            task_type=TASK,
            task_name="Flow classification",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=metric_type,
            metric_name=name,
            metric_value=float(value),
            metric_args=args,
        )

    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=TASK,
        tags=list(TAGS),
        datasets=[dataset_name] if is_hub_repo_id(dataset_name) else None,
        base_model=base_model,
        model_name=model_name,
        metrics=["accuracy", "f1"],
        eval_results=[
            result("accuracy", test["accuracy"], "Accuracy"),
            result("f1", test["macro_f1"], "Macro F1", {"average": "macro"}),
            result("f1", test["weighted_f1"], "Weighted F1", {"average": "weighted"}),
        ],
    )
    if pretrained is None:
        init = f"trained from scratch from the `{summary.get('preset')}` preset, no pre-training"
    elif base_model:
        init = f"initialised from the pre-trained encoder [{base_model}](https://huggingface.co/{base_model})"
    else:
        init = "initialised from a locally pre-trained MMAE encoder"
    pretraining = summary.get("pretraining")
    if pretraining and pretrained is not None:
        details = []
        if pretraining.get("steps") is not None:
            details.append(
                f"{pretraining['steps']} pre-training steps of {pretraining.get('global_batch_size', '?')} flows"
                f" on the {pretraining.get('split', 'train')} split"
            )
        off = [k[4:] for k, v in pretraining.get("switches", {}).items() if k.startswith("use_") and v is False]
        if off:
            details.append("ablation, switched off: " + ", ".join(off))
        if details:
            init += " (" + "; ".join(details) + ")"
    if config is not None:
        get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
        init += (
            f"; {get('num_hidden_layers')} layers, hidden size {get('hidden_size')}, {get('num_attention_heads')} heads"
        )
    if feature_extractor_config is None and summary.get("flow_options"):
        feature_extractor_config = {"flow_options": summary["flow_options"]}
    threshold = summary.get("ood_threshold")
    ood_rate = summary.get("test_share_below_ood_threshold")
    card = ModelCard.from_template(
        card_data,
        template_str=template.read_text(),
        model_name=model_name,
        repo_id=repo_id or f"<user>/{model_name}",
        init_description=init,
        num_labels=len(summary["label_names"]),
        label_names=summary["label_names"],
        dataset_name=dataset_name,
        num_rows=summary["num_rows"],
        num_train_rows_used=summary.get("num_train_rows_used", summary["num_rows"]["train"]),
        preprocessing=describe_preprocessing(feature_extractor_config),
        recipe=summary.get("hyperparameters", {}),
        best_checkpoint=summary.get("best_checkpoint") or "final",
        best_validation_macro_f1=summary.get("best_validation_macro_f1"),
        train_runtime_s=summary.get("train_runtime_s") or 0.0,
        global_steps=summary.get("global_steps", 0),
        validation=validation,
        test=test,
        per_class=test.get("per_class", {}),
        classes_missing_from_splits=summary.get("classes_missing_from_splits") or {},
        baselines=_baseline_rows(baselines),
        ood_threshold_text="None (no correct validation flow)" if threshold is None else f"{threshold:.4f}",
        ood_percentile=summary.get("ood_percentile", 5.0),
        ood_rate_text="n/a" if ood_rate is None else f"{100 * ood_rate:.1f}%",
    )
    return card


LOSS_NAMES = ("loss", "reconstruction_loss", "rank_loss", "distillation_loss")
OBJECTIVE_SWITCHES = (
    ("use_flowmix", "FlowMix"),
    ("use_teacher", "mean-teacher distillation"),
    ("use_loss_predictor", "loss predictor"),
    ("use_pmp", "PMP guidance"),
    ("use_guided_masking", "guided (hard) masking"),
)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def build_pretraining_model_card(
    folder: str | Path,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    dataset_name: str | None = None,
    template_path: str | Path | None = None,
    model_name: str | None = None,
):
    """The model card of a pre-training folder, from the files ``train/pretrain.py`` leaves there
    (``pretraining_summary.json``, ``pretraining_args.json``, ``config.json``, ``preprocessor_config.json``,
    ``pretraining_curves.png``): corpus, steps, flows seen, final loss components, curves.

    Args:
        folder: the pre-training output folder.
        repo_id: where it is (or will be) published, for the usage snippet.
        dataset_name: the corpus's name or Hub id (default: the run's ``--dataset``; a local path becomes its
            folder name).
        model_name: the model's name in the card (default: the folder's name).
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    summary = _read_json(folder / "pretraining_summary.json")
    if not summary:
        raise FileNotFoundError(f"{folder}: no pretraining_summary.json (not a folder written by train/pretrain.py)")
    run_args = _read_json(folder / "pretraining_args.json")
    config = _read_json(folder / "config.json")
    fe_config = _read_json(folder / "preprocessor_config.json") or None
    model_name = model_name or folder.resolve().name
    dataset = publishable_name(dataset_name or summary.get("dataset") or run_args.get("dataset")) or "unknown"
    steps, batch = int(summary.get("step", 0)), int(summary.get("global_batch_size", 0))
    flows = int(summary.get("num_training_flows") or 0)
    metrics = summary.get("last_metrics") or {}
    losses = {name: float(metrics[f"train/{name}"]) for name in LOSS_NAMES if f"train/{name}" in metrics}
    peak = run_args.get("learning_rate") or (run_args.get("base_learning_rate", 1e-3) * batch / 256 if batch else None)
    on = [text for key, text in OBJECTIVE_SWITCHES if config.get(key, True)]
    off = [text for key, text in OBJECTIVE_SWITCHES if config.get(key, True) is False]
    objectives = (
        "masked byte reconstruction"
        + "".join(f", {t}" for t in on)
        + (f" (switched off: {', '.join(off)})" if off else "")
    )
    if config.get("mask_ratio") is not None:
        objectives += f"; mask ratio {config['mask_ratio']}"
    rates = summary.get("samples_per_second_per_process") or []
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=[*TAGS, "pretraining"],
        datasets=[dataset] if is_hub_repo_id(dataset) else None,
        model_name=model_name,
    )
    template = Path(template_path) if template_path else PRETRAINING_TEMPLATE
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(),
        model_name=model_name,
        repo_id=repo_id or f"<user>/{model_name}",
        dataset_name=dataset,
        split=summary.get("split", "train"),
        num_training_flows=flows,
        steps=steps,
        max_steps=summary.get("max_steps", steps),
        finished=bool(summary.get("finished")),
        global_batch_size=batch,
        world_size=summary.get("world_size", 1),
        flows_seen=steps * batch,
        passes=(steps * batch / flows) if flows else 0.0,
        peak_learning_rate="n/a" if peak is None else f"{peak:.3g}",
        objectives=objectives,
        mixed_precision={"no": "fp32", None: "fp32"}.get(
            summary.get("mixed_precision"), summary.get("mixed_precision")
        ),
        num_hidden_layers=config.get("num_hidden_layers"),
        hidden_size=config.get("hidden_size"),
        num_attention_heads=config.get("num_attention_heads"),
        throughput=", ".join(f"{r:.1f}" for r in rates if r) or None,
        losses=losses,
        curves=(folder / "pretraining_curves.png").is_file(),
        preprocessing=describe_preprocessing(fe_config),
    )


def write_pretraining_model_card(folder: str | Path, **kwargs) -> Path:
    """`build_pretraining_model_card` saved as ``folder/README.md``; returns its path."""
    path = Path(folder) / "README.md"
    build_pretraining_model_card(folder, **kwargs).save(path)
    return path


__all__ = [
    "build_finetuned_model_card",
    "build_pretraining_model_card",
    "describe_preprocessing",
    "is_hub_repo_id",
    "publishable_name",
    "write_pretraining_model_card",
]
