"""Knowledge distillation to heal a converted model: KL to the teacher's next-token distribution, optionally plus
cross-entropy on the labels and an MSE between chosen hidden states.

Works with packed batches: the teacher gets the same ``input_ids``, ``position_ids`` and ``attention_mask`` as the
student (so both see the same documents), and positions whose next label is -100 (padding, the first token of every
packed document, the row's last position) are left out, exactly as the causal-LM loss leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer, TrainerCallback

from ..modeling.loss import IGNORE_INDEX, shift_labels

_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "inputs_embeds", "cu_seq_lens_q", "cu_seq_lens_k",
                 "max_length_q", "max_length_k")


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool: positions whose prediction is scored (the next label is not -100; the last never is)."""
    return shift_labels(labels) != IGNORE_INDEX


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    student_hidden: Sequence[torch.Tensor] = (),
    teacher_hidden: Sequence[torch.Tensor] = (),
    hidden_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-token mean of ``KL(teacher || student) * T^2`` at temperature ``T`` over the scored positions, plus
    ``ce_weight`` times the label cross-entropy and ``hidden_weight`` times the mean squared error of each pair of
    hidden states (averaged over the pairs).

    Returns a dict with ``loss`` (the total, differentiable) and the detached parts ``kl``, ``ce``, ``hidden_mse``.
    """
    if temperature <= 0:
        raise ValueError(f"distillation_loss: invalid `temperature`={temperature!r}; allowed: a positive float.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; allowed: the same shape (same vocabulary).")
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError("distillation_loss: `student_hidden` and `teacher_hidden` must pair up (same length).")
    mask = scored_positions(labels).to(student_logits.device)
    count = mask.sum().clamp(min=1)
    s = student_logits[mask].float()
    t = teacher_logits[mask].float().to(s.device)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum() / count * temperature**2
    total = kl
    zero = kl.new_zeros(())
    ce = zero
    if ce_weight:
        shifted = shift_labels(labels).to(s.device)[mask]
        ce = F.cross_entropy(s, shifted, reduction="sum") / count
        total = total + ce_weight * ce
    mse = zero
    if student_hidden:
        mse = sum(F.mse_loss(a[mask].float(), b[mask].float().to(a.device)) for a, b in
                  zip(student_hidden, teacher_hidden)) / len(student_hidden)
        total = total + hidden_weight * mse
    return {"loss": total, "kl": kl.detach(), "ce": ce.detach(), "hidden_mse": mse.detach()}


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``distillation_loss`` against a frozen ``teacher``.

    Args:
        teacher: The reference model (e.g. the model before conversion); frozen, in eval mode, moved to the
            student's device. It must share the student's vocabulary.
        temperature: Softmax temperature of the KL term.
        ce_weight: Weight of the cross-entropy on the labels (0: pure distillation).
        hidden_layers: Indices into ``output_hidden_states`` (0 is the embeddings, ``i`` the output of layer
            ``i - 1``) whose student/teacher states are matched by MSE; empty for none.
        hidden_weight: Weight of the hidden-state MSE.
        **kwargs: ``Trainer`` arguments (``model`` is the student).

    The loss is a per-batch mean, so gradient accumulation divides it by the number of accumulation steps as for any
    model that ignores ``num_items_in_batch``. Logged metrics add the mean ``kl`` (and ``ce``/``hidden_mse`` when
    used) since the last log.
    """

    def __init__(
        self,
        *args: Any,
        teacher: PreTrainedModel,
        temperature: float = 1.0,
        ce_weight: float = 0.0,
        hidden_layers: Sequence[int] = (),
        hidden_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"DistillationTrainer: invalid `temperature`={temperature!r}; allowed: a positive float.")
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)
        self.hidden_layers = list(hidden_layers)
        self.hidden_weight = float(hidden_weight)
        self.model_accepts_loss_kwargs = False  # the loss below is a per-batch mean
        self._distill_sums: dict[str, float] = {}
        self._distill_steps = 0

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k in _MODEL_INPUTS}
        want_hidden = bool(self.hidden_layers)
        # labels are not passed on: the student's own loss is not needed (and with fused_cross_entropy it would
        # return no logits)
        outputs = model(**model_inputs, use_cache=False, output_hidden_states=want_hidden)
        with torch.no_grad():
            teacher_out = self.teacher(**model_inputs, use_cache=False, output_hidden_states=want_hidden)
        parts = distillation_loss(
            outputs.logits,
            teacher_out.logits,
            labels,
            temperature=self.temperature,
            ce_weight=self.ce_weight,
            student_hidden=[outputs.hidden_states[i] for i in self.hidden_layers] if want_hidden else (),
            teacher_hidden=[teacher_out.hidden_states[i] for i in self.hidden_layers] if want_hidden else (),
            hidden_weight=self.hidden_weight,
        )
        if model.training:
            for key in ("kl", "ce", "hidden_mse"):
                self._distill_sums[key] = self._distill_sums.get(key, 0.0) + float(parts[key])
            self._distill_steps += 1
        loss = parts["loss"]
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._distill_steps and "loss" in logs:
            logs["kl"] = self._distill_sums["kl"] / self._distill_steps
            if self.ce_weight:
                logs["ce"] = self._distill_sums["ce"] / self._distill_steps
            if self.hidden_layers:
                logs["hidden_mse"] = self._distill_sums["hidden_mse"] / self._distill_steps
            self._distill_sums, self._distill_steps = {}, 0
        super().log(logs, *args, **kwargs)


@torch.no_grad()
def mean_kl(student: torch.nn.Module, teacher: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]],
            temperature: float = 1.0) -> float:
    """Token-weighted ``KL(teacher || student)`` (temperature 1 by default) over batches with ``labels``."""
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = {k: v for k, v in batch.items() if k in _MODEL_INPUTS}
        s = student(**inputs, use_cache=False).logits
        t = teacher(**inputs, use_cache=False).logits
        n = int(scored_positions(batch["labels"]).sum())
        total += float(distillation_loss(s, t, batch["labels"], temperature=temperature)["kl"]) * n
        count += n
    student.train(was_training)
    if count == 0:
        raise ValueError("mean_kl: the batches have no scored positions (all labels are -100).")
    return total / count


class RecoveryCallback(TrainerCallback):
    """Records the recovery curve of a distillation run: held-out KL to the teacher and, optionally, the
    needle-in-a-haystack score (``hybrid_hf.evaluation.evaluate_samples``), at the start and every ``every`` steps.

    ``curve`` holds one ``{"step", "kl", "niah"}`` dict per measurement (``niah`` is None without samples).
    """

    def __init__(self, teacher: torch.nn.Module, kl_batches: Sequence[dict[str, torch.Tensor]], every: int,
                 niah_samples: Sequence[Any] = (), tokenizer: Any = None, max_new_tokens: int = 8) -> None:
        if every < 1:
            raise ValueError(f"RecoveryCallback: invalid `every`={every!r}; allowed: a positive integer.")
        if niah_samples and tokenizer is None:
            raise ValueError("RecoveryCallback: `niah_samples` need the `tokenizer` to decode answers with.")
        self.teacher, self.kl_batches, self.every = teacher, list(kl_batches), every
        self.niah_samples, self.tokenizer, self.max_new_tokens = list(niah_samples), tokenizer, max_new_tokens
        self.curve: list[dict[str, Any]] = []

    def measure(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        from ..evaluation import evaluate_samples

        was_training = model.training
        point: dict[str, Any] = {"step": step, "kl": mean_kl(model, self.teacher, self.kl_batches), "niah": None}
        if self.niah_samples:
            records = evaluate_samples(model, self.tokenizer, self.niah_samples, max_new_tokens=self.max_new_tokens)
            point["niah"] = sum(r["score"] for r in records) / len(records)
        model.train(was_training)
        if not self.curve or self.curve[-1]["step"] != step:
            self.curve.append(point)
        return point

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.measure(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(model, state.global_step)
