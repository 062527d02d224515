"""Default PEFT target modules for ``model_type="hybrid_hf"``, so ``LoraConfig(task_type="CAUSAL_LM")`` works as is.

PEFT looks up default targets by ``config.model_type`` in its ``TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING``
tables and matches them as module-name suffixes. Without an entry it raises ``NoMatchingPeftModuleError``; with an
attention-only entry a hybrid silently trains only some of its layers (huggingface/peft#3554). So the defaults cover
every token mixer and every MLP:

- attention (full and sliding): ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``;
- recurrent mixers: their input/output projections (``q/k/v/o_proj`` and the output gate ``g_proj`` of Gated
  DeltaNet and lightning attention, ``in_proj``/``out_proj`` of Mamba-2);
- SwiGLU MLP: ``gate_proj``, ``up_proj``, ``down_proj``.

Norms, convolution weights, per-head decay/step parameters and the lm head are never targeted; name them in
``target_modules`` (or ``modules_to_save``) to train them.
"""

from __future__ import annotations

MODEL_TYPE = "hybrid_hf"

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MIXER_TARGETS = ("g_proj", "in_proj", "out_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
LORA_TARGET_MODULES = [*ATTENTION_TARGETS, *MIXER_TARGETS, *MLP_TARGETS]

# PEFT tables that take plain Linear targets the same way as LoRA (the variants derived from LoRA's table).
_LINEAR_TABLES = (
    "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_RANDLORA_TARGET_MODULES_MAPPING",
)


def register_peft_defaults() -> bool:
    """Register the default targets with PEFT (if installed). Returns whether PEFT was found.

    Called on ``import hybrid_hf``. The tables are imported by name into several PEFT modules, but they are the
    same dict objects, so updating them in ``peft.utils.constants`` reaches every user.
    """
    try:
        from peft.utils import constants
    except ImportError:
        return False
    for name in _LINEAR_TABLES:
        table = getattr(constants, name, None)
        if isinstance(table, dict):
            table.setdefault(MODEL_TYPE, list(LORA_TARGET_MODULES))
    ia3 = getattr(constants, "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING", None)
    ia3_ff = getattr(constants, "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING", None)
    if isinstance(ia3, dict) and isinstance(ia3_ff, dict):
        ia3.setdefault(MODEL_TYPE, ["k_proj", "v_proj", "down_proj"])
        ia3_ff.setdefault(MODEL_TYPE, ["down_proj"])
    return True


register_peft_defaults()
