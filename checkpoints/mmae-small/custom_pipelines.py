"""The ``custom_pipelines`` entry of a classifier's ``config.json``: how ``pipeline(model=...)`` finds the task.

A fine-tuned model folder names its pipeline in ``config.json`` (what ``Pipeline.save_pretrained`` writes) and carries
``pipeline_traffic.py``, so that transformers infers the task from the folder alone. transformers then imports that
saved copy of the pipeline, which needs ``trust_remote_code=True``, even when mmae-hf is installed and its pipeline
registered. With mmae-hf installed, `MMAEConfig` therefore wraps the entry in `RegisteredCustomPipelines`, which
lists the task (``pipeline(model=folder)`` still infers it) but tells transformers it is not remote
(``task in config.custom_pipelines`` is False), so the registered class is used and no remote code runs:

- ``import mmae_hf; pipeline(model=folder)`` and ``pipeline("traffic-classification", model=folder)``: the installed
  pipeline, no ``trust_remote_code``;
- without mmae-hf: ``pipeline(model=folder, trust_remote_code=True)`` runs the copy saved with the model.
"""

TASK = "traffic-classification"


def pipeline_entry() -> dict:
    """``{task: {"impl", "pt", "type"}}`` as ``Pipeline.save_pretrained`` writes it for the traffic pipeline."""
    return {
        TASK: {
            "impl": "pipeline_traffic.TrafficClassificationPipeline",
            "pt": ["AutoModelForSequenceClassification"],
            "type": "multimodal",
        }
    }


class RegisteredCustomPipelines(dict):
    """A ``custom_pipelines`` dict whose tasks are registered in this process (see the module docstring)."""

    def __contains__(self, task) -> bool:  # transformers' test for "resolve this task from the saved code"
        return False


def mark_registered(config) -> None:
    """Wrap ``config.custom_pipelines`` in `RegisteredCustomPipelines` (used by the installed `MMAEConfig`)."""
    pipelines = config.__dict__.get("custom_pipelines")
    if pipelines and not isinstance(pipelines, RegisteredCustomPipelines):
        config.__dict__["custom_pipelines"] = RegisteredCustomPipelines(pipelines)


def name_pipeline(config) -> None:
    """Name the traffic pipeline in ``config`` (before ``save_pretrained``)."""
    config.custom_pipelines = RegisteredCustomPipelines(pipeline_entry())


__all__ = ["RegisteredCustomPipelines", "TASK", "mark_registered", "name_pipeline", "pipeline_entry"]
