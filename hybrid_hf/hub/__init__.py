"""Hub utilities: model cards, self-contained checkpoint folders, and uploads with huggingface_hub.

    from hybrid_hf.hub import publish
    publish(model, "me/my-hybrid", tokenizer=tok, training_data="...", eval_results={...}, private=True)
"""

from .card import (
    CITATION,
    architecture_summary,
    layer_diagram,
    load_eval_results,
    parameter_counts,
    render_eval_tables,
    render_model_card,
    template_path,
)
from .checkpoint import HubError, check_checkpoint, check_repo_id, prepare_checkpoint, publish, push_folder

__all__ = [
    "CITATION",
    "HubError",
    "architecture_summary",
    "check_checkpoint",
    "check_repo_id",
    "layer_diagram",
    "load_eval_results",
    "parameter_counts",
    "prepare_checkpoint",
    "publish",
    "push_folder",
    "render_eval_tables",
    "render_model_card",
    "template_path",
]
