"""mmae-hf: MMAE (Mean Masked Autoencoder with Flow-Mixing) for encrypted-traffic classification.

Importing the package registers the MMAE classes with the transformers Auto* factories.
"""

__version__ = "0.1.0"

try:  # the torch side is optional: a dataset-building machine may have only numpy (mmae_hf.traffic is torch-free)
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover - exercised in a subprocess test
    _HAS_TORCH = False
else:
    _HAS_TORCH = True

if _HAS_TORCH:
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        AutoModelForPreTraining,
        AutoModelForSequenceClassification,
    )

    from .configuration_mmae import PRESETS, MMAEConfig
    from .feature_extraction_mmae import MMAEFeatureExtractor
    from .flowmix import DataCollatorForFlowMix
    from .modeling_mmae import (
        MMAEForPreTraining,
        MMAEForPreTrainingOutput,
        MMAEForSequenceClassification,
        MMAEModel,
        MMAEPreTrainedModel,
        MMAETeacherOutput,
        set_auto_map,
    )
    from .pipeline_traffic import TrafficClassificationPipeline, calibrate_ood_threshold, register_traffic_pipeline
    from .pmp import hard_mask_share
    from .teacher import MeanTeacher


    
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


__all__ = [
    "PRESETS",
    "DataCollatorForFlowMix",
    "MMAEConfig",
    "MMAEFeatureExtractor",
    "MMAEForPreTraining",
    "MMAEForPreTrainingOutput",
    "MMAEForSequenceClassification",
    "MMAEModel",
    "MMAEPreTrainedModel",
    "MMAETeacherOutput",
    "MeanTeacher",
    "TrafficClassificationPipeline",
    "calibrate_ood_threshold",
    "hard_mask_share",
    "set_auto_map",
]
