"""Offline English text for tokenizers, pretraining demos and evaluation.

Nothing here touches the network. ``build_corpus`` gathers prose that Debian packages install under ``/usr/share``
(GCIDE dictionary entries from ``dict-gcide``, the Python documentation sources from ``python3-doc``, GNU info
manuals, licence texts, the Linux kernel documentation sources from ``linux-doc``, Perl's manual pages from
``perl-doc``) and always ends with the small sample shipped in this folder, so it returns text on any
machine.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

SAMPLE_PATH = Path(__file__).with_name("sample.txt")

# Source name -> (glob patterns under /usr/share, reader). Order is the default preference order.
SOURCE_NAMES = ("gcide", "python-doc", "info", "licenses", "kernel-doc", "perl-doc", "sample")

_SHARE = Path("/usr/share")


def build_corpus(
    max_chars: int | None = 2_000_000,
    *,
    sources: Sequence[str] | None = None,
    output: str | Path | None = None,
    min_doc_chars: int = 200,
    root: str | Path | None = None,
    fallback: bool = True,
) -> list[str]:
    """Collect offline English documents, deterministically, up to ``max_chars`` characters in total.

    Args:
        max_chars: Stop once this many characters are collected (``None``: take everything found).
        sources: Subset of ``SOURCE_NAMES`` in preference order; default all of them. ``"sample"`` (the text
            shipped with the package) is always appended when nothing else was found.
        output: Optional file to write: ``.jsonl`` gets one ``{"text": ...}`` object per document, anything else
            gets the documents separated by blank lines.
        min_doc_chars: Drop documents shorter than this (dictionary stubs, headers); the sample is kept whole.
        root: Directory standing in for ``/usr/share`` (tests, or packages unpacked elsewhere).
        fallback: Return the shipped sample when ``sources`` found nothing (``False``: return ``[]``, so callers
            that need the named sources can tell).

    Returns:
        The documents, each a string of prose without markup.
    """
    names = list(sources) if sources is not None else list(SOURCE_NAMES)
    unknown = [n for n in names if n not in SOURCE_NAMES]
    if unknown:
        raise ValueError(f"build_corpus: unknown sources {unknown}; allowed: {', '.join(SOURCE_NAMES)}.")
    share = Path(root) if root is not None else _SHARE
    docs: list[str] = []
    total = 0

    def take(texts: Iterable[str], min_chars: int) -> bool:
        nonlocal total
        for text in texts:
            text = text.strip()
            if len(text) < min_chars:
                continue
            if max_chars is not None and total + len(text) > max_chars:
                text = text[: max_chars - total]
                if len(text) >= min_chars:
                    docs.append(text)
                    total += len(text)
                return False
            docs.append(text)
            total += len(text)
        return True

    for name in names:
        if name == "sample":
            continue
        if not take(_READERS[name](share), min_doc_chars):
            break
    if "sample" in names or (fallback and not docs):
        if max_chars is None or total < max_chars:
            take(sample_documents(), 1)
    if output is not None:
        write_documents(docs, output)
    return docs


def sample_documents() -> list[str]:
    """The short essays shipped in ``sample.txt`` (one document per ``## `` section, about 13 kB in all)."""
    text = SAMPLE_PATH.read_text(encoding="utf-8")
    return [s.split("\n", 1)[1].strip() for s in re.split(r"^## ", text, flags=re.M) if s.strip()]


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """Read documents from a ``.jsonl`` file (``text_field`` of each line) or a plain text file (paragraphs
    separated by blank lines).

    Every jsonl line must be an object whose ``text_field`` is a string; blank lines and empty or all-whitespace
    texts are skipped (as empty paragraphs are in text files). Anything else raises ``ValueError`` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_documents: no such file {str(path)!r}.")
    where = f"read_documents: {str(path)!r}"
    try:
        if path.suffix != ".jsonl":
            text = path.read_text(encoding="utf-8")
            return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        docs = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where} line {lineno} is not valid JSON ({err}).") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where} line {lineno} is not a JSON object; allowed: an object with a "
                                     f"string field {text_field!r}.")
                if text_field not in row:
                    raise ValueError(f"{where} line {lineno} has no field {text_field!r} (fields: "
                                     f"{', '.join(map(str, row)) or 'none'}).")
                value = row[text_field]
                if not isinstance(value, str):
                    shown = json.dumps(value)
                    shown = shown if len(shown) <= 40 else shown[:37] + "..."
                    raise ValueError(f"{where} line {lineno}: {text_field!r} is {shown}; allowed: a string.")
                if value.strip():
                    docs.append(value)
        return docs
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text ({err}).") from None


def write_documents(docs: Sequence[str], path: str | Path) -> Path:
    """Write documents as ``.jsonl`` (``{"text": ...}`` per line) or as blank-line separated text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as fh:
            for d in docs:
                fh.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    else:
        # Paragraph breaks inside a document would split it on reading, so they become single newlines.
        path.write_text("\n\n".join(re.sub(r"\n\s*\n", "\n", d) for d in docs) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- readers
def _open_text(path: Path) -> str:
    # dictzip (.dz) is gzip-compatible.
    if path.suffix in (".gz", ".dz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    return path.read_text(encoding="utf-8", errors="replace")


def _chunks(paragraphs: Iterable[str], size: int = 4000) -> Iterator[str]:
    """Group short paragraphs into documents of about ``size`` characters."""
    buf: list[str] = []
    n = 0
    for p in paragraphs:
        buf.append(p)
        n += len(p)
        if n >= size:
            yield "\n".join(buf)
            buf, n = [], 0
    if buf:
        yield "\n".join(buf)


def _gcide(share: Path) -> Iterator[str]:
    def entries(path: Path) -> Iterator[str]:
        # Streamed entry by entry (blank-line separated) so a small budget never decompresses the whole dictionary.
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
            buf: list[str] = []
            for line in fh:
                if line.strip():
                    buf.append(line)
                    continue
                if buf:
                    yield _clean_gcide("".join(buf))
                    buf = []
            if buf:
                yield _clean_gcide("".join(buf))

    for path in sorted(share.glob("dictd/gcide.dict*")):
        yield from _chunks(e for e in entries(path) if len(e) > 40 and not e.startswith("00-database"))


def _clean_gcide(entry: str) -> str:
    entry = re.sub(r"\[[^\]]*\]", "", entry)  # [1913 Webster], [Obs.] and similar source tags
    entry = re.sub(r"[{}]|<[^>]+>", "", entry)
    return re.sub(r"\s+", " ", entry).strip()


def _python_doc(share: Path) -> Iterator[str]:
    yield from _rst_sources(share, "doc/python3*/html/_sources")


def _kernel_doc(share: Path) -> Iterator[str]:
    yield from _rst_sources(share, "doc/linux-doc*/html/_sources")


def _rst_sources(share: Path, folder: str) -> Iterator[str]:
    """reStructuredText sources of a Sphinx HTML build (``_sources/**/*.txt``, also gzipped), markup removed."""
    files = _unique_files([*share.glob(f"{folder}/**/*.txt"), *share.glob(f"{folder}/**/*.txt.gz")])
    for path in files:
        text = _open_text(path)
        lines = []
        for line in text.splitlines():
            s = line.strip()
            if s.startswith(("..", ":")) or re.fullmatch(r"[=\-~^*#+`]{3,}", s):
                continue
            lines.append(line)
        text = "\n".join(lines)
        text = re.sub(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :func:`name` -> name
        text = text.replace("``", "")
        yield re.sub(r"\n{3,}", "\n\n", text)


def _info(share: Path) -> Iterator[str]:
    for path in sorted(share.glob("info/*.info*")):
        if path.name == "dir":
            continue
        text = _open_text(path)
        for node in text.split("\x1f"):
            body = "\n".join(
                line
                for line in node.splitlines()
                if not line.startswith(("File: ", "* ", "Tag Table:", "End Tag Table", "Node: "))
                and not re.fullmatch(r"[=\-*.]{3,}", line.strip())
            )
            yield re.sub(r"\n{3,}", "\n\n", body)


def _perl_doc(share: Path) -> Iterator[str]:
    """Perl's manual (``perl/5*/pod/*.pod``): POD commands and verbatim (indented) blocks dropped, formatting codes
    such as ``C<...>`` reduced to their text."""
    files = _unique_files([*share.glob("perl/5*/pod/*.pod"), *share.glob("perl/5*/pod/*.pod.gz")])
    for path in files:
        paragraphs = []
        skipping = False  # inside =begin ... =end (HTML, comments)
        for block in re.split(r"\n\s*\n", _open_text(path)):
            if block.startswith("=begin"):
                skipping = True
            if block.startswith("=end"):
                skipping = False
                continue
            if skipping or not block.strip() or block.startswith(("=", " ", "\t")):
                continue
            text = re.sub(r"\s+", " ", block).strip()
            text = re.sub(r"[XZ]<[^<>]*>", "", text)  # index entries, null codes
            text = re.sub(r"E<([^<>]*)>", lambda m: _POD_ESCAPES.get(m.group(1), ""), text)
            for _ in range(3):  # nested codes, innermost first
                text = re.sub(r"[A-Z]<<+\s(.*?)\s>+>", r"\1", text)
                text = re.sub(r"[A-Z]<([^<>]*)>", lambda m: m.group(1).split("|")[0], text)
            paragraphs.append(text)
        yield "\n\n".join(paragraphs)


_POD_ESCAPES = {"lt": "<", "gt": ">", "sol": "/", "verbar": "|", "quot": '"', "amp": "&", "apos": "'"}


def _unique_files(paths: Iterable[Path]) -> list[Path]:
    """Sorted paths, each file once (Debian links ``perl/5.36`` to ``5.36.0``, so globs can find a file twice)."""
    seen: dict[Path, Path] = {}
    for p in sorted(paths):
        seen.setdefault(p.resolve(), p)
    return sorted(seen.values())


def _licenses(share: Path) -> Iterator[str]:
    seen: set[Path] = set()
    for path in sorted(share.glob("common-licenses/*")):
        real = path.resolve()
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        yield _open_text(real)


_READERS: dict[str, Callable[[Path], Iterator[str]]] = {
    "gcide": _gcide,
    "python-doc": _python_doc,
    "info": _info,
    "licenses": _licenses,
    "kernel-doc": _kernel_doc,
    "perl-doc": _perl_doc,
}
