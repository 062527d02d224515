"""Offline text and tokenizer helpers: a corpus from locally installed documentation or from the docstrings of
installed Python code, the natural-text + needle training mixture, and a BPE trainer."""

from .corpus import SOURCE_NAMES, build_corpus, read_documents, sample_documents, write_documents
from .docstrings import corpus_fingerprint, docstring_documents, split_held_out
from .mixture import NeedleMixture, answer_ids, tokenize_stream
from .tokenizer import train_tokenizer

__all__ = ["SOURCE_NAMES", "NeedleMixture", "answer_ids", "build_corpus", "corpus_fingerprint", "docstring_documents",
           "read_documents", "sample_documents", "split_held_out", "tokenize_stream", "train_tokenizer",
           "write_documents"]
