"""``generate_fast``: chunked prefill into a ``HybridStaticCache``, then one-token steps replayed as a CUDA graph.

Use it where ``model.generate`` is too slow for long contexts; on CPU it runs the same steps eagerly (and is what
the tests compare against a plain forward).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..modeling.attention_kernels import raise_recompile_limits
from ..modeling.modeling_hybrid import HybridForCausalLM
from ..modeling.static_cache import HybridStaticCache

_COMPILED_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _decode_layers(model: HybridForCausalLM, compile: bool) -> list[nn.Module]:
    """The decoder layers the decode step runs: as they are, or ``torch.compile``d copies (made once per model; the
    model itself is left uncompiled, so prefill and training are unaffected)."""
    layers = list(model.model.layers)
    if not compile:
        return layers
    compiled = _COMPILED_LAYERS.get(model)
    if compiled is None or len(compiled) != len(layers):
        raise_recompile_limits()  # one graph per layer (the layer index picks its cache slot)
        compiled = [torch.compile(layer, dynamic=False) for layer in layers]
        _COMPILED_LAYERS[model] = compiled
    return compiled


def _decode_step(model: HybridForCausalLM, layers: list[nn.Module], tokens: torch.Tensor, positions: torch.Tensor,
                 cache: HybridStaticCache) -> torch.Tensor:
    """``model(tokens, position_ids=positions, past_key_values=cache).logits[:, -1]`` for one new token per row,
    written out so that the layers can be compiled on their own (no Python-side state changes inside them)."""
    base = model.model
    hidden = base.embed_tokens(tokens)
    rope = base.rotary_emb(hidden, positions)
    for layer in layers:
        hidden, _ = layer(hidden, attention_mask=None, position_ids=positions, past_key_values=cache, use_cache=True,
                          position_embeddings=rope.get(layer.layer_type))
    return model.lm_head(base.norm(hidden)[:, -1])


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
    compile: bool = False,
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
            attention; several times faster per token on a GPU). The first call per model compiles (tens of
            seconds); the model's own forward stays uncompiled.
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
    cache = HybridStaticCache(model.config, batch, prompt_len + max_new_tokens, device, dtype)

    logits = None
    for start in range(0, prompt_len, prefill_chunk_size):
        chunk = input_ids[:, start : start + prefill_chunk_size]
        logits = model(chunk, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    tokens = torch.empty(batch, max_new_tokens, dtype=input_ids.dtype, device=device)
    step_logits = [] if return_logits else None
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    static_tok = torch.empty(batch, 1, dtype=input_ids.dtype, device=device)
    static_pos = torch.empty(1, 1, dtype=torch.long, device=device)

    layers = _decode_layers(model, compile)

    def step() -> torch.Tensor:
        return _decode_step(model, layers, static_tok, static_pos, cache)

    graph = None
    static_out = None
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
        static_tok.copy_(nxt[:, None])
        static_pos.fill_(prompt_len + i)
        cache.seen = prompt_len + i
        if not cuda_graph:
            logits = step()
        elif graph is None:
            # The first decode step runs for real on a side stream (it also warms up lazy allocations); the graph
            # captured next records the same step for all later tokens.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                logits = step().clone()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = step()
        else:
            graph.replay()
            logits = static_out
    out = torch.cat([input_ids, tokens], dim=1)
    if return_logits:
        n = len(step_logits)
        return out, torch.stack(step_logits, dim=1) if n else torch.empty(batch, 0, device=device)
    return out
