"""mmae-hf: MMAE (Mean Masked Autoencoder with Flow-Mixing) for encrypted-traffic classification.

`import mmae_hf` registers the MMAE classes with transformers' Auto factories (`AutoConfig`, `AutoModel`,
`AutoModelForPreTraining`, `AutoModelForSequenceClassification`, `AutoFeatureExtractor`) and the
``traffic-classification`` pipeline task, so that `AutoModel.from_pretrained(folder)` and `pipeline(...)` work.
The names below (`mmae_hf.MMAEConfig`, ...) load on first use.

The torch-free layers stay torch-free: `import mmae_hf.traffic` (pcaps -> flows -> datasets) and
`import mmae_hf.data_contract` load neither torch nor transformers. When the package is imported only as their
parent, registration waits for the first import of another submodule (`mmae_hf.modeling_mmae`, `mmae_hf.training`,
...), the first use of a model-side name (`mmae_hf.MMAEConfig`, ...) or an explicit `mmae_hf.register_auto_classes()`.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from types import FrameType


__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY_NAMES = {
    "PRESETS": "configuration_mmae",
    "MMAEConfig": "configuration_mmae",
    "MMAEFeatureExtractor": "feature_extraction_mmae",
    "DataCollatorForFlowMix": "flowmix",
    "MMAEForPreTraining": "modeling_mmae",
    "MMAEForPreTrainingOutput": "modeling_mmae",
    "MMAEForSequenceClassification": "modeling_mmae",
    "MMAEModel": "modeling_mmae",
    "MMAEPreTrainedModel": "modeling_mmae",
    "MMAETeacherOutput": "modeling_mmae",
    "set_auto_map": "modeling_mmae",
    "TrafficClassificationPipeline": "pipeline_traffic",
    "calibrate_ood_threshold": "evaluation",
    "hard_mask_share": "pmp",
    "MeanTeacher": "teacher",
}
# submodules that import neither torch nor transformers
_TORCH_FREE_SUBMODULES = ("traffic", "data_contract")
# the torch side is optional: a dataset-building machine may have only numpy (mmae_hf.traffic is torch-free)
_HAS_TORCH = all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))
_registered = False


def register_auto_classes() -> bool:
    """Register the MMAE classes with transformers' Auto factories (also for `trust_remote_code` saving) and the
    ``traffic-classification`` pipeline task. Idempotent. Returns False when torch or transformers is missing (a
    dataset-building machine may have numpy only)."""
    global _registered
    if _registered:
        return True
    if not _HAS_TORCH:
        return False
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        AutoModelForPreTraining,
        AutoModelForSequenceClassification,
    )

    from .configuration_mmae import MMAEConfig
    from .feature_extraction_mmae import MMAEFeatureExtractor
    from .modeling_mmae import MMAEForPreTraining, MMAEForSequenceClassification, MMAEModel
    from .pipeline_traffic import register_traffic_pipeline

    AutoConfig.register("mmae", MMAEConfig, exist_ok=True)
    AutoModel.register(MMAEConfig, MMAEModel, exist_ok=True)
    AutoModelForPreTraining.register(MMAEConfig, MMAEForPreTraining, exist_ok=True)
    AutoModelForSequenceClassification.register(MMAEConfig, MMAEForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(MMAEConfig, MMAEFeatureExtractor, exist_ok=True)

    # trust_remote_code: save_pretrained copies the .py files; the full auto_map is written by MMAEPreTrainedModel.
    MMAEConfig.register_for_auto_class()
    MMAEModel.register_for_auto_class("AutoModel")
    MMAEForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    MMAEForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    # (MMAEFeatureExtractor copies itself for remote code when saved next to a model, see its save_pretrained)

    # pipeline("traffic-classification", model=...): pcap in, one prediction per flow out
    register_traffic_pipeline()
    _registered = True
    return True


def __getattr__(name):
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()  # the model side is in use: make the Auto factories know it
    value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES))


def _imported_as_parent_of_a_torch_free_submodule() -> bool:
    """True while Python runs this file only because `import mmae_hf.traffic` (or `mmae_hf.data_contract`) needs
    its parent package: the import system's frame one level up is then loading that submodule."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_find_and_load_unlocked":
            requested = frame.f_locals.get("name")
            if isinstance(requested, str) and requested != __name__:
                parts = requested.split(".")
                return parts[0] == __name__ and len(parts) > 1 and parts[1] in _TORCH_FREE_SUBMODULES
        frame = frame.f_back
    return False


class _RegisterWithTheModelSide(importlib.abc.MetaPathFinder):
    """Registers the Auto classes once any other submodule (`mmae_hf.modeling_mmae`, `mmae_hf.training...`) has been
    imported, in a process that started with the torch-free side only (then `import mmae_hf` ran nothing more)."""

    def find_spec(self, fullname, path, target=None):
        parts = fullname.split(".")
        if parts[0] != __name__ or len(parts) < 2 or parts[1] in _TORCH_FREE_SUBMODULES:
            return None
        sys.meta_path.remove(self)  # once
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                register_auto_classes()

            spec.loader.exec_module = exec_module
        return spec


if _imported_as_parent_of_a_torch_free_submodule():
    sys.meta_path.insert(0, _RegisterWithTheModelSide())
else:
    register_auto_classes()


__all__ = ["register_auto_classes", *_LAZY_NAMES]
