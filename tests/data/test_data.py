"""hybrid_hf.data: offline corpus and BPE tokenizer."""

from __future__ import annotations

import gzip
import json

import pytest
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


def test_kernel_and_perl_documentation_sources_read_gzipped_text_without_markup(tmp_path):
    share = tmp_path / "share"
    rst = share / "doc" / "linux-doc-6.1" / "html" / "_sources" / "PCI" / "pci.rst.txt.gz"
    rst.parent.mkdir(parents=True)
    with gzip.open(rst, "wt") as fh:
        fh.write(".. SPDX-License-Identifier: GPL-2.0\n\n=====\nTitle\n=====\n\n"
                 "The world of PCI is vast and full of surprises, see :c:func:`pci_enable_device` for ``details``.\n")
    pod = share / "perl" / "5.36.0" / "pod" / "perlfaq6.pod"
    pod.parent.mkdir(parents=True)
    pod.write_text("=head1 NAME\n\nperlfaq6 - Regular Expressions\n\n    my $code = 1;  # verbatim\n\n"
                   "Use C<qr//> and B<I<nested>> codes, see L<perlre|perlre/Modifiers> and C<< $a <=> $b >>.\n\n"
                   "=begin html\n\n<p>skipped</p>\n\n=end html\n\n"
                   "Compare X<compare>E<lt>=E<gt> with C<<\nsort >>.\n")
    (pod.parent.parent.parent / "5.36").symlink_to("5.36.0")  # Debian's link: each file is still read once
    kernel = build_corpus(max_chars=None, sources=["kernel-doc"], root=share, min_doc_chars=10)
    assert len(kernel) == 1 and "SPDX" not in kernel[0] and "=====" not in kernel[0]
    assert "see pci_enable_device for details." in kernel[0]
    perl = build_corpus(max_chars=None, sources=["perl-doc"], root=share, min_doc_chars=10)
    assert perl == ["perlfaq6 - Regular Expressions\n\nUse qr// and nested codes, see perlre and $a <=> $b.\n\n"
                    "Compare <=> with sort."]


def test_study_docs_profile_names_missing_documentation(tmp_path):
    from hybrid_hf.reproduction import prepare, settings_for

    with pytest.raises(ValueError, match="text_sources.*allowed"):
        settings_for("smoke", text_sources=("kernel-docs",))
    s = settings_for("main", text_sources=("kernel-doc",), text_root=str(tmp_path / "empty"), corpus_chars=20_000)
    with pytest.raises(ValueError, match="'kernel-doc' found no files under text_root"):
        prepare(tmp_path / "work", s)


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
