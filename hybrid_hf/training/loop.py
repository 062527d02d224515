"""A small resumable pretraining loop with periodic evaluation, for from-scratch experiments.

``train_loop`` runs AdamW with linear warmup and a constant learning rate afterwards (so a run stopped by a time
budget, or resumed later, follows the same schedule as one that ran straight through), calls ``evaluate`` at the
given steps and keeps its results in ``state.history``, and writes a checkpoint (model, optimizer, RNG states, step,
history) that ``resume=True`` continues from. Data comes from ``batch_fn(step)``, which must be a pure function of
the step (e.g. ``hybrid_hf.data.NeedleMixture.batch``), so no data state needs saving. A batch is a token tensor
(plain next-token loss) or carries per-token loss weights (``{"input_ids", "loss_weight"}`` or a pair), e.g.
``NeedleMixture.weighted_batch``; the loss is then the weighted mean token loss (``weighted_token_loss``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..modeling.loss import IGNORE_INDEX, shift_labels, token_losses

Batch = torch.Tensor | dict[str, torch.Tensor] | tuple[torch.Tensor, torch.Tensor]


@dataclass
class LoopConfig:
    """Optimisation and schedule of ``train_loop``; ``eval_steps`` and ``checkpoint_every`` are in optimizer steps."""

    steps: int
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_steps: Sequence[int] = ()
    checkpoint_every: int = 0  # 0: only at the end (and when the time budget runs out)
    time_budget_s: float = math.inf  # wall seconds of this call (training + evaluation) before stopping early
    bf16: bool = True  # autocast on CUDA
    # torch.compile the training forward + loss (True: inductor; a string: that torch.compile backend). Evaluation
    # and checkpoints use the plain module.
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"LoopConfig: steps={self.steps} must be >= 1.")
        if self.lr <= 0:
            raise ValueError(f"LoopConfig: lr={self.lr} must be > 0.")
        if not isinstance(self.compile, (bool, str)):
            raise ValueError(f"LoopConfig: compile={self.compile!r}; allowed: False, True or a torch.compile backend name.")
        if self.warmup < 0 or self.checkpoint_every < 0:
            raise ValueError("LoopConfig: warmup and checkpoint_every must be >= 0.")
        bad = [s for s in self.eval_steps if not 0 <= s <= self.steps]
        if bad:
            raise ValueError(f"LoopConfig: eval_steps {bad} lie outside [0, steps={self.steps}].")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        return self.lr * min(1.0, step / self.warmup) if self.warmup else self.lr


@dataclass
class LoopState:
    """Progress of a run: ``step`` optimizer steps done, evaluation results, seconds spent (over all calls)."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    eval_s: float = 0.0
    stopped_early: bool = False
    losses: list[tuple[int, float]] = field(default_factory=list)


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: LoopState
                    ) -> Path:
    """Write model, optimizer, RNG states and loop state to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": asdict(state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> LoopState:
    """Restore what ``save_checkpoint`` wrote into ``model`` and ``optimizer``; returns the loop state."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    s = blob["state"]
    s["losses"] = [tuple(x) for x in s["losses"]]
    return LoopState(**s)


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norms, biases and gains are not decayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


def split_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(input_ids, loss_weight or None)`` of what a ``batch_fn`` returned: a token tensor, a dict with
    ``input_ids`` and optionally ``loss_weight``, or a pair ``(input_ids, loss_weight)``; checks the shapes."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        if "input_ids" not in batch or set(batch) - {"input_ids", "loss_weight"}:
            raise ValueError(f"train_loop: a dict batch needs 'input_ids' and optionally 'loss_weight'; got keys "
                             f"{sorted(batch)}.")
        ids, weight = batch["input_ids"], batch.get("loss_weight")
    elif isinstance(batch, tuple | list) and len(batch) == 2:
        ids, weight = batch
    else:
        raise TypeError(f"train_loop: batch_fn returned {type(batch).__name__}; expected a token tensor, a dict "
                        "{'input_ids', 'loss_weight'} or a pair (input_ids, loss_weight).")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise ValueError("train_loop: input_ids must be a 2-d (batch, seq) tensor.")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.shape != ids.shape:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"train_loop: loss_weight must be a tensor shaped like input_ids {tuple(ids.shape)} "
                             f"(aligned with the tokens as labels); got {got}.")
        if weight.dtype == torch.bool:
            weight = weight.float()
        elif not weight.is_floating_point():
            raise ValueError(f"train_loop: loss_weight must be float or bool; got {weight.dtype}.")
    return ids, weight


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, loss_weight: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Weighted mean next-token loss: ``sum(w * l) / sum(w)`` over scored positions (fp32).

    ``loss_weight`` is aligned with ``labels`` (weight of each token as the label predicted from the position
    before it) and shifted with them (``shift_labels``); positions whose shifted label is ``ignore_index`` (and the
    last one) count with weight 0. All-ones weights give the plain mean token loss; all-zero weights give 0.
    """
    losses = token_losses(logits, labels, ignore_index)
    weight = shift_labels(loss_weight.to(losses.device, torch.float32), 0)
    weight = weight * (shift_labels(labels, ignore_index).to(losses.device) != ignore_index)
    return (losses * weight).sum() / weight.sum().clamp(min=torch.finfo(torch.float32).tiny)


def train_loop(model: torch.nn.Module, batch_fn: Callable[[int], Batch], cfg: LoopConfig,
               evaluate: Callable[[torch.nn.Module, int], dict[str, Any]] | None = None,
               checkpoint: str | Path | None = None, resume: bool = False,
               log: Callable[[dict[str, Any]], None] | None = None) -> LoopState:
    """Train ``model`` on ``batch_fn(step)`` (``step`` 1-based; next-token loss on every token) up to ``cfg.steps``.

    ``batch_fn`` returns token ids (the plain mean token loss) or ids with per-token loss weights (see
    ``split_batch``; the loss is ``weighted_token_loss``, and ``state.losses`` logs that weighted loss).

    ``evaluate(model, step)`` runs (in eval mode, no grad) at every step in ``cfg.eval_steps`` (step 0: before
    training) and its dict is appended to ``state.history`` with ``step`` and ``train_s``. With ``checkpoint``,
    the run is saved every ``cfg.checkpoint_every`` steps, at the end, and when ``cfg.time_budget_s`` runs out;
    ``resume=True`` continues from that file when it exists. Returns the final ``LoopState``.
    """
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, cfg)
    state = LoopState()
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, model, optimizer)
        state.stopped_early = False  # this call's budget decides (a resumed leg may well finish)
    eval_steps = set(cfg.eval_steps)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    t_call = time.time()

    def run_eval(step: int) -> None:
        if evaluate is None or any(h["step"] == step for h in state.history):
            return
        t0 = time.time()
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            result = evaluate(model, step)
        model.train()
        state.eval_s += time.time() - t0
        state.history.append({"step": step, "train_s": round(state.train_s, 2), **result})
        if log:
            log({"step": step, "eval": result})

    def forward_loss(batch: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        if weight is None:
            return model(batch, labels=batch, use_cache=False).loss
        return weighted_token_loss(model(batch, use_cache=False).logits, batch, weight)

    if cfg.compile:
        backend = "inductor" if cfg.compile is True else cfg.compile
        forward_loss = torch.compile(forward_loss, backend=backend, dynamic=False)

    if state.step == 0 and 0 in eval_steps:
        run_eval(0)
    model.train()
    while state.step < cfg.steps:
        if time.time() - t_call > cfg.time_budget_s:
            state.stopped_early = True
            break
        step = state.step + 1
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        batch, weight = split_batch(batch_fn(step))
        batch = batch.to(device, non_blocking=True)
        if weight is not None:
            weight = weight.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = forward_loss(batch, weight)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step = step
        if step in eval_steps or step % 50 == 0 or step == cfg.steps:
            state.losses.append((step, float(loss.detach())))  # syncs the GPU; only at logged steps
        state.train_s += time.time() - t0
        if step in eval_steps:
            run_eval(step)
        if checkpoint is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_checkpoint(checkpoint, model, optimizer, state)
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, optimizer, state)
    return state
