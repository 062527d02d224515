"""hybrid_hf.data: offline corpus and BPE tokenizer."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from hybrid_hf.data import build_corpus, read_documents, sample_documents, train_tokenizer, write_documents


def test_sample_is_shipped_and_split_into_documents():
    docs = sample_documents()
    assert len(docs) >= 10
    assert all(len(d) > 500 and not d.startswith("##") for d in docs)


def test_build_corpus_falls_back_to_sample_and_respects_budget(tmp_path):
    docs = build_corpus(max_chars=None, root=tmp_path)  # empty /usr/share stand-in
    assert docs == sample_documents()
    capped = build_corpus(max_chars=3000, root=tmp_path)
    assert sum(map(len, capped)) <= 3000 and capped[0] == docs[0]


def test_build_corpus_reads_license_texts_and_writes_jsonl(tmp_path):
    lic = tmp_path / "share" / "common-licenses"
    lic.mkdir(parents=True)
    (lic / "MIT").write_text("Permission is hereby granted, free of charge, to any person. " * 10)
    out = tmp_path / "corpus.jsonl"
    docs = build_corpus(max_chars=None, sources=["licenses", "sample"], root=tmp_path / "share", output=out)
    assert docs[0].startswith("Permission is hereby granted")
    assert docs[1:] == sample_documents()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == docs
    assert read_documents(out) == docs


def test_text_round_trip(tmp_path):
    docs = ["first doc\nwith two lines", "second doc"]
    path = write_documents(docs, tmp_path / "c.txt")
    assert read_documents(path) == ["first doc\nwith two lines", "second doc"]


def test_train_tokenizer_round_trips_and_saves(tmp_path):
    tok = train_tokenizer(sample_documents(), tmp_path / "tok", vocab_size=600)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert 300 < len(tok) <= 600
    text = "The keeper counted the steps: 112, naïvely. 🙂"
    assert tok.decode(tok(text).input_ids) == text
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded(text).input_ids == tok(text).input_ids
