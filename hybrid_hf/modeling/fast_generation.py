"""Fast generation: chunked prefill into a ``HybridStaticCache``, then one-token steps replayed as a CUDA graph.

``generate_fast`` is the function; ``HybridForCausalLM.generate`` routes every call it can serve here
(``route_generate``: greedy or sampled decoding of equal-length rows) and hands the others to transformers' own loop,
logging once why. On CPU the same steps run eagerly (and are what the tests compare against a plain forward). Lives
in the model package so that Hub remote code gets the fast path too; ``hybrid_hf.generation`` re-exports it.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.utils import logging

from .attention_dispatch import static_cache_refusal
from .attention_kernels import raise_recompile_limits
from .static_cache import HybridStaticCache

if TYPE_CHECKING:
    from .modeling_hybrid import HybridForCausalLM

logger = logging.get_logger(__name__)


def fused_decode_weights(model: HybridForCausalLM) -> list[dict[str, torch.Tensor] | None]:
    """Per layer, decode-only copies of the q/k/v and gate/up projections concatenated into one matrix each (one
    matmul instead of three and two for a single token per row); None for recurrent layers and for layers whose
    projections are not plain ``nn.Linear`` (PEFT adapters, quantised linears: those run through their modules)."""
    out: list[dict[str, torch.Tensor] | None] = []
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.layer_type == "linear_attention":
                out.append(None)
                continue
            attn, mlp = layer.self_attn, layer.mlp
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            if any(type(m) is not nn.Linear for m in (*projections, mlp.gate_proj, mlp.up_proj)):
                out.append(None)
                continue
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
             device: torch.device, dtype: torch.dtype, decode_kernel: str) -> _Session:
    """A fresh static cache, or (attention-only models) the one of the last call with the same buffer shapes,
    together with its captured decode step: capturing costs about as much as tens of decode steps."""
    cfg = model.config

    def new() -> _Session:
        return _Session(HybridStaticCache(cfg, batch, max_length, device, dtype, decode_kernel),
                        torch.zeros(batch, 1, dtype=torch.long, device=device))

    if "linear_attention" in cfg.layer_types:  # recurrent state is not reset in place
        return new()
    shapes = HybridStaticCache.buffer_shapes(cfg, max_length)
    key = (batch, shapes, dtype, str(device), id(layers), decode_kernel)  # the layers stand for the compile options
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


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens from (B, V) logits: argmax, or a sample after temperature, top-k and top-p (transformers' order and
    rules: ties at the k-th value are kept, top-p keeps the smallest set whose mass reaches ``top_p``)."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, descending=False)
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


STOP_CHECK_EVERY = 16  # decode steps between host checks of "every row has stopped"


def _stop_ids(eos_token_id: int | Sequence[int] | torch.Tensor | None) -> list[int]:
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, torch.Tensor):
        return [int(t) for t in eos_token_id.flatten().tolist()]
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(t) for t in eos_token_id]


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
    top_p: float | None = None,
    min_new_tokens: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    decode_kernel: str = "torch",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Generate up to ``max_new_tokens`` tokens after ``input_ids`` (B, T; equal-length rows, no padding).

    Args:
        prefill_chunk_size: prompt tokens per prefill forward; bounds activation memory for very long prompts.
        cuda_graph: capture the decode step in a CUDA graph (default: on when the model is on CUDA).
        compile: ``torch.compile`` the decoder layers of the decode step (fuses norms, RoPE, SwiGLU and the decode
            attention; several times faster per token on a GPU); a dict is passed to ``torch.compile`` (e.g.
            ``{"mode": "max-autotune-no-cudagraphs"}``). The first call per model compiles (tens of seconds); the
            model's own forward stays uncompiled.
        do_sample, temperature, top_k, top_p, generator: sampling controls, applied as transformers does (greedy by
            default).
        min_new_tokens: the stop tokens cannot be picked before this many new tokens.
        eos_token_id: stop token id(s); a row that produced one is finished, and generation ends once every row is.
        pad_token_id: what finished rows get afterwards (default: the first stop token).
        return_logits: also return the (B, steps, V) raw logits of each step.
        decode_kernel: attention of the decode steps, ``"torch"`` or ``"triton"`` (flash-decoding kernel, CUDA; see
            ``HybridStaticCache``).
    Returns:
        ``(B, T + steps)`` token ids, ``steps`` = ``max_new_tokens`` or fewer when every row stopped earlier (as
        transformers' ``generate`` returns them), and the step logits if asked.

    For attention-only models the static cache and captured decode step of the last call are kept for the next call
    whose buffers have the same sizes (full layers round ``T + max_new_tokens`` up to a multiple of 1024); free them
    with ``release_decode_buffers(model)``. Decode uses copies of the q/k/v and gate/up weights fused into one matrix
    each; they are rebuilt whenever a parameter changes. The model's train/eval mode is restored on return.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"generate_fast: `input_ids` must be (batch, length>0), got {tuple(input_ids.shape)}.")
    if max_new_tokens < 1:
        raise ValueError(f"generate_fast: `max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if prefill_chunk_size < 1:
        raise ValueError(f"generate_fast: `prefill_chunk_size` must be >= 1, got {prefill_chunk_size}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate_fast: `top_p` must be in (0, 1], got {top_p}.")
    if do_sample and temperature <= 0:
        raise ValueError(f"generate_fast: `temperature` must be > 0 when sampling, got {temperature}.")
    device = input_ids.device
    cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    if cuda_graph and device.type != "cuda":
        raise ValueError("generate_fast: cuda_graph=True needs the model and inputs on CUDA.")
    was_training = model.training
    model.eval()
    try:
        return _generate(model, input_ids, max_new_tokens, prefill_chunk_size, cuda_graph, compile,
                         lambda logits: _pick(logits, do_sample, temperature, top_k, top_p, generator),
                         min_new_tokens, _stop_ids(eos_token_id), pad_token_id, return_logits, decode_kernel)
    finally:
        model.train(was_training)


def _generate(model: HybridForCausalLM, input_ids: torch.Tensor, max_new_tokens: int, prefill_chunk_size: int,
              cuda_graph: bool, compile: bool | dict[str, Any], pick: Callable[[torch.Tensor], torch.Tensor],
              min_new_tokens: int, stop: list[int], pad_token_id: int | None, return_logits: bool,
              decode_kernel: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    device = input_ids.device
    batch, prompt_len = input_ids.shape
    state = _state(model)
    layers = _decode_layers(state, model, _compile_options(compile, device))
    if state.fused_weights is None:
        state.fused_weights = fused_decode_weights(model)
    dtype = model.get_input_embeddings().weight.dtype
    if torch.is_autocast_enabled(device.type):  # keys/values come out of autocast projections in its dtype
        dtype = torch.get_autocast_dtype(device.type)
    session = _session(state, model, layers, batch, prompt_len + max_new_tokens, device, dtype, decode_kernel)
    cache = session.cache

    logits = None
    for start in range(0, prompt_len, prefill_chunk_size):
        chunk = input_ids[:, start : start + prefill_chunk_size]
        logits = model(chunk, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    stop_ids = torch.tensor(stop, dtype=input_ids.dtype, device=device)
    fill = pad_token_id if pad_token_id is not None else (stop[0] if stop else 0)
    tokens = torch.full((batch, max_new_tokens), fill, dtype=input_ids.dtype, device=device)
    step_logits = [] if return_logits else None
    # the step at which each row produced a stop token (max_new_tokens: not yet), kept on the device: the host looks
    # at it only every STOP_CHECK_EVERY steps, so decoding with stop tokens does not synchronise at every token
    finished_at = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)

    def step() -> torch.Tensor:
        return model.decode_step(session.tokens, cache, layers, state.fused_weights)

    for i in range(max_new_tokens):
        if step_logits is not None:
            step_logits.append(logits.to(torch.float32, copy=True))  # replays overwrite the graph's output
        if stop and i < min_new_tokens:
            logits = logits.index_fill(-1, stop_ids, float("-inf"))
        nxt = pick(logits)
        if stop:
            finished = finished_at < max_new_tokens
            nxt = torch.where(finished, torch.full_like(nxt, fill), nxt)
            finished_at.masked_fill_(torch.isin(nxt, stop_ids) & ~finished, i)
        tokens[:, i] = nxt
        if i == max_new_tokens - 1 or (stop and (i + 1) % STOP_CHECK_EVERY == 0
                                       and bool((finished_at < max_new_tokens).all())):
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
    # when every row stopped, generation ends at the step where the last one did
    steps = min(int(finished_at.max()) + 1, max_new_tokens) if stop else max_new_tokens
    out = torch.cat([input_ids, tokens[:, :steps]], dim=1)
    if return_logits:
        return out, torch.stack(step_logits[:steps], dim=1)
    return out


# ------------------------------------------------------------------------------------------ generate() routing
# Generation-config fields the fast path serves; every other field must keep its neutral value (below) or the call
# goes to transformers' loop.
_SERVED = frozenset({
    "max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
    "pad_token_id", "bos_token_id", "decoder_start_token_id", "cache_implementation", "compile_config",
    "disable_compile", "num_return_sequences", "use_cache", "transformers_version", "_from_model_config",
    "_commit_hash", "max_cache_len", "cache_config",
})
_NEUTRAL: dict[str, Any] = {
    "num_beams": 1, "num_beam_groups": 1, "min_length": 0, "repetition_penalty": 1.0, "typical_p": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "early_stopping": False,
    "diversity_penalty": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "remove_invalid_values": False,
    "renormalize_logits": False, "output_scores": False, "output_logits": False, "output_attentions": False,
    "output_hidden_states": False, "return_dict_in_generate": False, "encoder_repetition_penalty": 1.0,
    "low_memory": False, "is_assistant": False,
}
# Knobs of assisted decoding, which only runs with an assistant model, prompt lookup or early exit (all refused
# above or below); transformers 5.17's pipeline config sets num_assistant_tokens=20 on every call.
_ASSISTED_ONLY = frozenset({"num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
                            "assistant_lookbehind", "target_lookbehind", "max_matching_ngram_size"})
# generate() arguments that are not generation-config fields; any of them set means transformers' loop.
_STOCK_ONLY_ARGUMENTS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus",
                         "assistant_model", "streamer", "negative_prompt_ids", "negative_prompt_attention_mask",
                         "custom_generate", "tokenizer", "assistant_tokenizer", "inputs_embeds", "past_key_values")
_FAST_CACHE_IMPLEMENTATIONS = (None, "static")  # "static" also compiles the decode step, as transformers does
_logged_reasons: set[str] = set()


@dataclass
class _Routing:
    """A ``generate`` call read for the fast path: the ``generate_fast`` arguments, or why it cannot go there."""

    reason: str | None = None
    input_ids: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and len(value) == 0)


def _read_call(model: HybridForCausalLM, inputs: torch.Tensor | None, generation_config: Any,
               kwargs: dict[str, Any]) -> _Routing:
    for name in _STOCK_ONLY_ARGUMENTS:
        if not _empty(kwargs.get(name)):
            return _Routing(f"`{name}` was given")
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    rest = config.update(**{k: v for k, v in kwargs.items() if k not in _STOCK_ONLY_ARGUMENTS})
    input_ids = rest.pop("input_ids", inputs)
    attention_mask = rest.pop("attention_mask", None)
    rest = {k: v for k, v in rest.items() if v is not None}
    if rest:
        return _Routing(f"model argument(s) {', '.join(sorted(rest))} given")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        return _Routing("no (batch, length) `input_ids` tensor")
    if input_ids.device != model.get_input_embeddings().weight.device:
        return _Routing("`input_ids` are on another device than the model")
    if attention_mask is not None and not bool(torch.as_tensor(attention_mask).all()):
        return _Routing("a padded batch (`attention_mask` has zeros)")
    if model.training and (model.config.attention_dropout > 0
                           or any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())):
        return _Routing("the model is in training mode with dropout (the fast path decodes in eval mode)")
    if static_cache_refusal(model.config) is not None:
        return _Routing("receptive-field caps (config.eval_full_attention_window / eval_efficient_window) are set")
    for name, value in config.to_diff_dict().items():
        if name in _ASSISTED_ONLY:
            continue
        if name not in _SERVED and name in _NEUTRAL and value != _NEUTRAL[name] and value is not None:
            return _Routing(f"generation_config.{name}={value!r}")
        if name not in _SERVED and name not in _NEUTRAL and not _empty(value) and value is not False:
            return _Routing(f"generation_config.{name}={value!r}")
    if config.use_cache is False:
        return _Routing("use_cache=False")
    if config.cache_implementation not in _FAST_CACHE_IMPLEMENTATIONS:
        return _Routing(f"cache_implementation={config.cache_implementation!r}")
    do_sample = bool(config.do_sample)
    copies = config.num_return_sequences or 1
    if copies != 1 and not do_sample:
        return _Routing("num_return_sequences > 1 without sampling")
    prompt_len = input_ids.shape[1]
    if config.max_new_tokens is not None:
        new = config.max_new_tokens
    else:
        new = (config.max_length if config.max_length is not None else 20) - prompt_len
    if new < 1:
        return _Routing(f"no new tokens to generate (max_new_tokens={new})")
    compile = (config.cache_implementation == "static" and input_ids.device.type == "cuda"
               and not getattr(config, "disable_compile", False))
    top_k = config.top_k if config.top_k is not None else 50
    options = dict(do_sample=do_sample, temperature=config.temperature if config.temperature is not None else 1.0,
                   top_k=top_k or None, top_p=config.top_p, min_new_tokens=config.min_new_tokens or 0,
                   eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, compile=compile)
    if copies != 1:
        input_ids = input_ids.repeat_interleave(copies, dim=0)
    return _Routing(None, input_ids, dict(options, max_new_tokens=new))


def reset_fallback_log() -> None:
    """Let the next fallback of every reason log its info line again (each is logged once per process)."""
    _logged_reasons.clear()


def fast_path_refusal(model: HybridForCausalLM, inputs: torch.Tensor | None = None, generation_config: Any = None,
                      **kwargs: Any) -> str | None:
    """Why ``model.generate(inputs, generation_config, **kwargs)`` would run transformers' own loop instead of
    ``generate_fast``, or None when it takes the fast path."""
    return _read_call(model, inputs, generation_config, kwargs).reason


def route_generate(model: HybridForCausalLM, stock_generate: Callable[..., Any], inputs: torch.Tensor | None,
                   generation_config: Any, **kwargs: Any) -> Any:
    """``HybridForCausalLM.generate``: the fast path for greedy / sampled decoding of equal-length rows (CUDA-graph
    decode on a GPU; ``cache_implementation="static"`` also compiles the step), transformers' ``stock_generate``
    for everything else (beam search, padded batches, streamers, logits processors, dict outputs,
    ``cache_implementation="dynamic"``), with one info log per reason."""
    routing = _read_call(model, inputs, generation_config, kwargs)
    if routing.reason is not None:
        if routing.reason not in _logged_reasons:
            _logged_reasons.add(routing.reason)
            logger.info(f"hybrid_hf generate: transformers' decoding loop is used because of {routing.reason}; "
                        "the fast path serves greedy/sampled decoding of unpadded batches.")
        return stock_generate(inputs, generation_config, **kwargs)
    out = generate_fast(model, routing.input_ids, **routing.options)
    return out.clone()  # a normal tensor, not an inference-mode one (callers may edit it in place)
