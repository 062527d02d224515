"""Offline text and tokenizer helpers: a corpus from locally installed documentation and a BPE trainer."""

from .corpus import SOURCE_NAMES, build_corpus, read_documents, sample_documents, write_documents
from .tokenizer import train_tokenizer

__all__ = ["SOURCE_NAMES", "build_corpus", "read_documents", "sample_documents", "train_tokenizer", "write_documents"]
