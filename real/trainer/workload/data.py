"""Training data: a byte-level tokenizer and a deterministic batch pipeline over a text corpus.

The tokenizer is the identity on UTF-8 bytes (vocabulary 256), so any text trains the model
and nothing needs a vocabulary file. A corpus is one long byte array. Rank ``r`` of ``W`` draws
the windows of its batch at data position ``p`` from a numpy generator seeded with
``(seed, W, r, p)``: a batch is a pure function of those four numbers, so a restored data
position (part of the training state) continues exactly where the checkpoint left off, and
two runs with the same seed see the same data.

Corpora (``load_corpus``):

- no source: the offline default, the documentation text CPython ships in
  ``pydoc_data.topics`` (~0.45 MB; present wherever Python is installed, never downloaded);
- a text file, optionally ``.bz2``, ``.gz`` or ``.xz`` compressed;
- a MediaWiki XML dump (``enwiki-*-pages-articles*.xml[.bz2]``): the wikitext of every page;
- a folder of ``*.txt`` files (read in name order);
- a Hugging Face ``datasets`` cache folder (``*.arrow`` files, the ``text`` column), read
  with pyarrow when it is installed.

Large sources are read up to ``max_bytes`` (streamed; the whole English Wikipedia never has to
fit in memory).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
VOCAB_SIZE = 256


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no unknown tokens, no files."""

    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> np.ndarray:
        """Token ids (uint8) of ``text``."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, tokens: np.ndarray | torch.Tensor | list[int]) -> str:
        """Text of ``tokens``; invalid UTF-8 sequences become U+FFFD."""
        values = tokens.tolist() if isinstance(tokens, np.ndarray | torch.Tensor) else tokens
        return bytes(int(t) for t in values).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus.

    Attributes:
        tokens: the bytes, uint8.
        source: where it came from, for logs.
        fingerprint: first 16 hex digits of the sha256 of ``tokens``; a restored data position
            is only meaningful on the same corpus.
    """

    tokens: np.ndarray
    source: str
    fingerprint: str

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> Corpus:
        return cls(
            tokens=np.frombuffer(data, dtype=np.uint8),
            source=source,
            fingerprint=hashlib.sha256(data).hexdigest()[:16],
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def load_corpus(source: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Corpus:
    """Load a corpus; see the module docstring for the kinds of ``source``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: the source holds no text, or a folder holds neither text nor arrow files.
        ImportError: a datasets cache was given and pyarrow is not installed.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if source is None or str(source) == "":
        data, name = _python_docs(), "pydoc_data.topics (CPython documentation)"
    else:
        path = Path(source).expanduser()
        name = str(path)
        if not path.exists():
            raise FileNotFoundError(
                f"corpus {path} does not exist; give a text file, a Wikipedia XML dump, a folder "
                "of .txt files or a Hugging Face datasets cache folder (see docs/training.md)"
            )
        data = _read_folder(path, max_bytes) if path.is_dir() else _read_file(path, max_bytes)
    data = data[:max_bytes]
    if not data:
        raise ValueError(f"corpus {name} holds no text")
    return Corpus.from_bytes(data, name)


def _python_docs() -> bytes:
    # The topic texts of `help()`, generated from the Python documentation at CPython's build.
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def _open(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if suffix in (".xz", ".lzma"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _read_file(path: Path, max_bytes: int) -> bytes:
    with _open(path) as handle:
        head = handle.read(4096)
    if _looks_like_mediawiki(head):
        return _read_mediawiki(path, max_bytes)
    with _open(path) as handle:
        return handle.read(max_bytes)


def _looks_like_mediawiki(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith(b"<mediawiki") or (text.startswith(b"<?xml") and b"<mediawiki" in text)


def _read_mediawiki(path: Path, max_bytes: int) -> bytes:
    """Wikitext of every page of a MediaWiki XML dump, articles separated by blank lines."""
    out = io.BytesIO()
    for text in _iter_mediawiki_texts(path):
        if text.lstrip().upper().startswith("#REDIRECT"):
            continue
        out.write(text.encode("utf-8"))
        out.write(b"\n\n")
        if out.tell() >= max_bytes:
            break
    return out.getvalue()


def _iter_mediawiki_texts(path: Path) -> Iterator[str]:
    with _open(path) as handle:
        root: ElementTree.Element | None = None
        for event, element in ElementTree.iterparse(handle, events=("start", "end")):
            if root is None and event == "start":
                root = element
            if event != "end":
                continue
            tag = element.tag.rsplit("}", 1)[-1]  # the dump's elements carry a namespace
            if tag == "text" and element.text:
                yield element.text
            elif tag == "page" and root is not None:
                root.clear()  # keep memory flat while streaming a dump of many GB


def _read_folder(path: Path, max_bytes: int) -> bytes:
    arrows = sorted(path.rglob("*.arrow"))
    if arrows:
        return _read_arrow_files(arrows, max_bytes)
    texts = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not texts:
        raise ValueError(
            f"corpus folder {path} holds neither .txt files nor a Hugging Face datasets cache "
            "(.arrow files)"
        )
    out = io.BytesIO()
    for text_file in texts:
        out.write(text_file.read_bytes()[: max_bytes - out.tell()])
        out.write(b"\n\n")
        if out.tell() >= max_bytes:
            break
    return out.getvalue()


def _read_arrow_files(files: list[Path], max_bytes: int) -> bytes:
    """The ``text`` column of a Hugging Face datasets cache (arrow IPC stream files)."""
    try:
        import pyarrow as pa
    except ImportError as error:
        raise ImportError(
            f"{files[0].parent} is a Hugging Face datasets cache (.arrow files); reading it "
            "needs pyarrow: pip install pyarrow"
        ) from error
    out = io.BytesIO()
    for arrow_file in files:
        with pa.memory_map(str(arrow_file), "r") as source:
            try:
                reader = pa.ipc.open_stream(source)  # what `datasets` writes
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
            for batch in _record_batches(reader):
                if "text" not in batch.schema.names:
                    raise ValueError(
                        f"{arrow_file} has no 'text' column (columns: {batch.schema.names})"
                    )
                for text in batch.column("text").to_pylist():
                    if text:
                        out.write(text.encode("utf-8"))
                        out.write(b"\n\n")
                if out.tell() >= max_bytes:
                    return out.getvalue()
    return out.getvalue()


def _record_batches(reader: Any) -> Iterator[Any]:
    if hasattr(reader, "num_record_batches"):  # a file reader
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
    else:
        yield from reader


class DataPipeline:
    """Deterministic batches of one rank.

    Args:
        corpus: the tokens.
        context: tokens per sequence.
        batch_size: sequences per batch.
        seed: the run's seed.
        rank: this rank.
        world_size: ranks drawing data (data-parallel width).
        position: the data position to start at (batches drawn so far).
    """

    def __init__(
        self,
        corpus: Corpus,
        context: int,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        position: int = 0,
    ) -> None:
        if len(corpus) < context + 2:
            raise ValueError(
                f"corpus {corpus.source} has {len(corpus)} tokens; context {context} needs at "
                f"least {context + 2}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.corpus = corpus
        self.context = context
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = position
        self._offsets = np.arange(context + 1)

    def batch_at(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (int64, ``[batch_size, context]``) at ``position``."""
        generator = np.random.default_rng([self.seed, self.world_size, self.rank, position])
        starts = generator.integers(0, len(self.corpus) - self.context - 1, size=self.batch_size)
        windows = torch.from_numpy(
            self.corpus.tokens[starts[:, None] + self._offsets].astype(np.int64)
        )
        return windows[:, :-1], windows[:, 1:]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at the current position; advances the position."""
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def state(self) -> dict[str, Any]:
        """The data position and what it is relative to (JSON values)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "corpus": self.corpus.fingerprint,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Resume at a saved position.

        Raises:
            ValueError: the state belongs to another corpus, seed or data-parallel layout.
        """
        expected = {k: v for k, v in self.state().items() if k != "position"}
        found = {k: state.get(k) for k in expected}
        if found != expected:
            raise ValueError(
                f"the checkpoint's data position was taken with {found}; this run has "
                f"{expected}: use the same corpus, seed and world size to resume"
            )
        self.position = int(state["position"])
