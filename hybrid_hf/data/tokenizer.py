"""Train a small byte-level BPE tokenizer offline and wrap it as a transformers tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

# Ids 0, 1, 2 match the defaults of tests/conftest.py's tiny models (pad 0, eos 1, bos 2).
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<s>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN)


def train_tokenizer(
    texts: Iterable[str],
    output_dir: str | Path | None = None,
    *,
    vocab_size: int = 4096,
    min_frequency: int = 2,
    model_max_length: int = 16384,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style, lossless on any UTF-8 text) on ``texts``.

    The special tokens take ids 0 (``<pad>``), 1 (``<|endoftext|>``, eos) and 2 (``<s>``, bos). Encoding adds no
    special tokens; append ``tokenizer.eos_token_id`` between documents when packing.

    Args:
        texts: Training documents (e.g. from ``hybrid_hf.data.build_corpus()``).
        output_dir: If given, the tokenizer is saved there with ``save_pretrained``.
        vocab_size: Target vocabulary size including the 256 byte symbols and the special tokens.
        min_frequency: Minimum pair count for a merge.
        model_max_length: Recorded in ``tokenizer_config.json``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size} must be at least {256 + len(SPECIAL_TOKENS)}.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        model_max_length=model_max_length,
    )
    if output_dir is not None:
        fast.save_pretrained(str(output_dir))
    return fast
