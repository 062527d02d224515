"""English prose harvested offline from the docstrings of installed Python code.

Every machine that runs hybrid_hf has the Python standard library, ``pydoc_data.topics`` (the language reference
as plain text) and torch, transformers and numpy with their dependencies installed, and their docstrings are several
MB of English prose. Files are parsed with ``ast`` (nothing is imported), code examples and symbol-heavy lines are
dropped, and repeated paragraphs (transformers copies argument docs across hundreds of models) are kept once. The
result depends on the installed versions, so callers should record ``corpus_fingerprint`` with their results.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import sysconfig
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Packages present wherever hybrid_hf is installed (its dependencies and theirs); missing ones are skipped.
DEFAULT_PACKAGES = ("torch", "transformers", "numpy", "sympy", "networkx", "huggingface_hub", "accelerate", "peft",
                    "jinja2", "safetensors", "tokenizers")
_WORD = re.compile(r"[A-Za-z][a-z]+")


def _package_dirs(packages: Sequence[str]) -> list[Path]:
    dirs = [Path(sysconfig.get_paths()["stdlib"])]
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def _source_files(root: Path) -> list[Path]:
    skip = {"test", "tests", "site-packages", "dist-packages", "testing", "_vendor", "idlelib", "lib2to3"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _is_prose(line: str) -> bool:
    s = line.strip()
    if not s or s.startswith((">>>", "...", "$ ", "```", ".. ", ":param", ":type", ":return")):
        return False
    words = _WORD.findall(s)
    # Prose lines are mostly words; tables, signatures and code are mostly symbols.
    return len(words) >= 4 and sum(map(len, words)) >= 0.6 * len(s)


def _paragraphs(doc: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in block.splitlines() if _is_prose(ln)]
        if lines:
            text = re.sub(r"\s+", " ", " ".join(lines)).replace("``", "").replace("`", "")
            if len(text) >= 80:
                yield text


def _file_paragraphs(path: str) -> list[str]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, OSError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 80:
                out.extend(_paragraphs(doc))
    return out


def docstring_documents(packages: Sequence[str] = DEFAULT_PACKAGES, doc_chars: int = 4000, workers: int = 1,
                        max_chars: int | None = None) -> list[str]:
    """Documents of about ``doc_chars`` characters of deduplicated docstring prose, in a fixed order: the
    language reference topics first, then the standard library and ``packages`` file by file.

    Args:
        packages: Importable package names to harvest besides the standard library (absent ones are skipped).
        doc_chars: Target size of one document (consecutive paragraphs of one source file are grouped).
        workers: Processes parsing files in parallel (the result does not depend on it).
        max_chars: Stop after this many characters (``None``: all).
    """
    if doc_chars < 1:
        raise ValueError(f"docstring_documents: doc_chars={doc_chars} must be >= 1.")
    if workers < 1:
        raise ValueError(f"docstring_documents: workers={workers} must be >= 1.")
    per_file: list[list[str]] = []
    try:
        from pydoc_data.topics import topics

        per_file += [list(_paragraphs(topics[k])) for k in sorted(topics)]
    except ImportError:  # some distributions strip pydoc_data
        pass
    files = [str(p) for root in _package_dirs(packages) for p in _source_files(root)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            per_file += list(pool.map(_file_paragraphs, files, chunksize=32))
    else:
        per_file += [_file_paragraphs(f) for f in files]
    seen: set[str] = set()
    docs: list[str] = []
    total = 0
    for paragraphs in per_file:
        buf: list[str] = []
        for p in paragraphs:
            h = hashlib.blake2b(p.encode(), digest_size=8).digest()
            if h in seen:
                continue
            seen.add(h)
            buf.append(p)
            if sum(map(len, buf)) >= doc_chars:
                docs.append("\n".join(buf))
                total += len(docs[-1])
                buf = []
        if buf:
            docs.append("\n".join(buf))
            total += len(docs[-1])
        if max_chars is not None and total >= max_chars:
            break
    return docs


def split_held_out(docs: Sequence[str], held_out_fraction: float) -> tuple[list[str], list[str]]:
    """Disjoint (train, held-out) documents, chosen by a hash of each document's text (stable under reordering and
    under adding or removing other documents); identical documents always land on the same side."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"split_held_out: held_out_fraction={held_out_fraction} must be in (0, 1).")
    train, held = [], []
    for d in docs:
        u = int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big") / 2**64
        (held if u < held_out_fraction else train).append(d)
    if not train or not held:
        raise ValueError(f"split_held_out: {len(docs)} documents give an empty side at fraction {held_out_fraction}.")
    return train, held


def corpus_fingerprint(docs: Sequence[str]) -> dict[str, int | str]:
    """Size and sha256 (first 16 hex digits) of a document list, to record with results."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode())
        h.update(b"\0")
    return {"documents": len(docs), "chars": sum(map(len, docs)), "sha256": h.hexdigest()[:16]}
