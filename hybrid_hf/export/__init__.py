"""Export hybrid_hf models to stock transformers architectures that serving engines run (vLLM, SGLang, TGI).

    from hybrid_hf.export import export_model, export_targets
    [t.target for t in export_targets(model.config) if t.supported]   # e.g. ['smollm3']
    export_model("runs/swa128-nope/final", to="smollm3", out_dir="exports/smollm3")

Only exact exports are written: a model that a target cannot express is refused with the blocking fields named,
and every written checkpoint is checked against the source (logits and cached greedy generation) before it appears.
"""

from .exporter import ATOL, ExportVerificationError, export_model, model_card, refusal_message, verify_export
from .targets import (
    ARCHITECTURES,
    TARGETS,
    TargetSupport,
    blocking_reasons,
    export_targets,
    map_state_dict,
    serving_caveats,
    target_config,
)

__all__ = [
    "ARCHITECTURES",
    "ATOL",
    "TARGETS",
    "ExportVerificationError",
    "TargetSupport",
    "blocking_reasons",
    "export_model",
    "export_targets",
    "map_state_dict",
    "model_card",
    "refusal_message",
    "serving_caveats",
    "target_config",
    "verify_export",
]
