"""``generate_fast``: chunked prefill into a ``HybridStaticCache``, then one-token steps replayed as a CUDA graph.

Use it where ``model.generate`` is too slow for long contexts; on CPU it runs the same steps eagerly (and is what
the tests compare against a plain forward).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..modeling.attention_kernels import raise_recompile_limits
from ..modeling.modeling_hybrid import HybridForCausalLM
from ..modeling.static_cache import HybridStaticCache


def fused_decode_weights(model: HybridForCausalLM) -> list[dict[str, torch.Tensor] | None]:
    """Per layer, decode-only copies of the q/k/v and gate/up projections concatenated into one matrix each (one
    matmul instead of three and two for a single token per row); None for recurrent layers."""
    out: list[dict[str, torch.Tensor] | None] = []
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.layer_type == "linear_attention":
                out.append(None)
                continue
            attn, mlp = layer.self_attn, layer.mlp
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            weights = {"qkv_weight": torch.cat([m.weight for m in projections]),
                       "gate_up_weight": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])}
            if attn.q_proj.bias is not None:
                weights["qkv_bias"] = torch.cat([m.bias for m in projections])
            out.append(weights)
    return out


@dataclass
class _Session:
    """A static cache and its captured decode step, kept for the next call with the same shapes."""

    cache: HybridStaticCache
    tokens: torch.Tensor
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None


@dataclass
class _DecodeState:
    """Per-model decode artefacts; dropped whenever a parameter changes (training, loading, moving)."""

    signature: tuple
    fused_weights: list[dict[str, torch.Tensor] | None] | None = None
    layers: dict[str, list[nn.Module]] = field(default_factory=dict)
    sessions: dict[tuple, _Session] = field(default_factory=dict)


_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(model: HybridForCausalLM) -> _DecodeState:
    signature = tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters())
    state = _STATE.get(model)
    if state is None or state.signature != signature:
        state = _STATE[model] = _DecodeState(signature)
    return state


def _compile_options(compile: bool | dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    if compile is False:
        return None
    if compile is True:  # GEMMs with one row per sequence gain most from autotuned kernels
        return {"dynamic": False, **({"mode": "max-autotune-no-cudagraphs"} if device.type == "cuda" else {})}
    if isinstance(compile, dict):
        return {"dynamic": False, **compile}
    raise ValueError(f"generate_fast: `compile` must be a bool or a dict of torch.compile options, got {compile!r}.")


def _decode_layers(state: _DecodeState, model: HybridForCausalLM, options: dict[str, Any] | None) -> list[nn.Module]:
    """The model's own decoder layers, ``torch.compile``d copies of them when asked (made once per model and
    options; the model's layers themselves stay eager)."""
    key = repr(sorted(options.items())) if options is not None else "eager"
    if key not in state.layers:
        layers = list(model.model.layers)
        if options is not None:
            raise_recompile_limits()  # one graph per layer (the layer index picks its cache slot)
            layers = [torch.compile(layer, **options) for layer in layers]
        state.layers[key] = layers
    return state.layers[key]


def _session(state: _DecodeState, model: HybridForCausalLM, layers: list[nn.Module], batch: int, max_length: int,
             device: torch.device, dtype: torch.dtype) -> _Session:
    """A fresh static cache, or (attention-only models) the one of the last call with the same buffer shapes,
    together with its captured decode step: capturing costs about as much as tens of decode steps."""
    cfg = model.config

    def new() -> _Session:
        return _Session(HybridStaticCache(cfg, batch, max_length, device, dtype),
                        torch.zeros(batch, 1, dtype=torch.long, device=device))

    if "linear_attention" in cfg.layer_types:  # recurrent state is not reset in place
        return new()
    shapes = HybridStaticCache.buffer_shapes(cfg, max_length)
    key = (batch, shapes, dtype, str(device), id(layers))  # the layers stand for the compile options
    session = state.sessions.get(key)
    if session is None:
        state.sessions.clear()  # one live session per model: its buffers hold a whole context
        session = state.sessions[key] = new()
    session.cache.restart(max_length)
    return session


def decode_cache(model: HybridForCausalLM) -> HybridStaticCache | None:
    """The static cache ``generate_fast`` keeps for ``model`` between calls (attention-only models), or None."""
    state = _STATE.get(model)
    session = next(iter(state.sessions.values()), None) if state is not None else None
    return session.cache if session is not None else None


def release_decode_buffers(model: HybridForCausalLM) -> None:
    """Free what ``generate_fast`` keeps for ``model`` between calls (the static cache of the last shape, its CUDA
    graph, fused and compiled decode layers)."""
    _STATE.pop(model, None)


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_fast(
    model: HybridForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    prefill_chunk_size: int = 8192,
    cuda_graph: bool | None = None,
    compile: bool | dict[str, Any] = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Generate ``max_new_tokens`` tokens after ``input_ids`` (B, T; equal-length rows, no padding).

    Args:
        prefill_chunk_size: prompt tokens per prefill forward; bounds activation memory for very long prompts.
        cuda_graph: capture the decode step in a CUDA graph (default: on when the model is on CUDA).
        compile: ``torch.compile`` the decoder layers of the decode step (fuses norms, RoPE, SwiGLU and the decode
            attention; several times faster per token on a GPU); a dict is passed to ``torch.compile`` (e.g.
            ``{"mode": "max-autotune-no-cudagraphs"}``). The first call per model compiles (tens of seconds); the
            model's own forward stays uncompiled.

    For attention-only models the static cache and captured decode step of the last call are kept for the next call
    whose buffers have the same sizes (full layers round ``T + max_new_tokens`` up to a multiple of 1024); free them
    with ``release_decode_buffers(model)``. Decode uses copies of the q/k/v and gate/up weights fused into one matrix
    each; they are rebuilt whenever a parameter changes.
        do_sample, temperature, top_k, generator: sampling controls (greedy by default).
        eos_token_id: stop once every row has produced it (later tokens of finished rows are set to it).
        return_logits: also return the (B, max_new_tokens, V) logits of each step.
    Returns:
        ``(B, T + max_new_tokens)`` token ids (and the step logits if asked).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"generate_fast: `input_ids` must be (batch, length>0), got {tuple(input_ids.shape)}.")
    if max_new_tokens < 1:
        raise ValueError(f"generate_fast: `max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if prefill_chunk_size < 1:
        raise ValueError(f"generate_fast: `prefill_chunk_size` must be >= 1, got {prefill_chunk_size}.")
    model.eval()
    device = input_ids.device
    dtype = model.get_input_embeddings().weight.dtype
    batch, prompt_len = input_ids.shape
    cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    if cuda_graph and device.type != "cuda":
        raise ValueError("generate_fast: cuda_graph=True needs the model and inputs on CUDA.")
    state = _state(model)
    layers = _decode_layers(state, model, _compile_options(compile, device))
    if state.fused_weights is None:
        state.fused_weights = fused_decode_weights(model)
    session = _session(state, model, layers, batch, prompt_len + max_new_tokens, device, dtype)
    cache = session.cache

    logits = None
    for start in range(0, prompt_len, prefill_chunk_size):
        chunk = input_ids[:, start : start + prefill_chunk_size]
        logits = model(chunk, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    tokens = torch.empty(batch, max_new_tokens, dtype=input_ids.dtype, device=device)
    step_logits = [] if return_logits else None
    finished = torch.zeros(batch, dtype=torch.bool, device=device)

    def step() -> torch.Tensor:
        return model.decode_step(session.tokens, cache, layers, state.fused_weights)

    for i in range(max_new_tokens):
        nxt = _pick(logits, do_sample, temperature, top_k, generator)
        if eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
            finished |= nxt == eos_token_id
        tokens[:, i] = nxt
        if step_logits is not None:
            step_logits.append(logits.float())
        if i == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
            tokens[:, i + 1 :] = eos_token_id if eos_token_id is not None else 0
            break
        session.tokens.copy_(nxt[:, None])
        if not cuda_graph:
            logits = step()
        elif session.graph is None:
            # The first decode step runs for real on a side stream (it also warms up lazy allocations and compiles);
            # the graph captured next records the same step (capturing runs nothing) and is replayed for all later
            # tokens, and for later calls of this shape. The cache advances its device-side position in the step.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                logits = step()
            torch.cuda.current_stream().wait_stream(stream)
            session.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(session.graph):
                session.logits = step()
        else:
            session.graph.replay()
            logits = session.logits
    out = torch.cat([input_ids, tokens], dim=1)
    if return_logits:
        n = len(step_logits)
        return out, torch.stack(step_logits, dim=1) if n else torch.empty(batch, 0, device=device)
    return out
