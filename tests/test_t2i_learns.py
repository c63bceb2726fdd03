"""The text-to-image system with its default recipe learns what it is asked (issue 15).

A tiny T2I model (the ``tiny`` UNet preset, 8x8 latents) is trained by Lightning for 200 steps on 16x16
images of a coloured square on a dark textured background, captioned with the colour. Its samples (the system's own
sampler, guidance and spacing) must show the caption's colour far more often than chance (1/4) and than decoded
noise. The frozen MoVQ is replaced by a fixed pooling autoencoder whose latents have std ~0.2 like the tiny MoVQ's,
so the measured latent scale matters. With the release's settings (latent scale 1, eps-prediction, dynamic
threshold 0.98, release spacing) this budget gave colour fields (see ``RELEASE_SETTINGS``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
PALETTE = {"red": (0.9, -0.8, -0.8), "green": (-0.8, 0.8, -0.7), "blue": (-0.7, -0.6, 0.9), "yellow": (0.9, 0.8, -0.8)}
NAMES = list(PALETTE)
COLOURS = torch.tensor([PALETTE[n] for n in NAMES])  # 4 3, in [-1, 1]
LATENT_STD = 0.2  # about the tiny MoVQ's


class PoolAutoencoder(nn.Module):
    """A fixed stand-in for the frozen MoVQ: ``(n, 3, 16, 16)`` -> 2x2 average pool, a 4th channel (the luminance),
    times ``0.2`` -> ``(n, 4, 8, 8)``; decoding inverts it (nearest upsampling of the 3 colour channels)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 2)
        return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1) * LATENT_STD

    def decode(self, z: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        return F.interpolate(z[:, :3] / LATENT_STD, scale_factor=2, mode="nearest")


class Squares(Dataset):
    """``"a <colour> square"`` -> a 6x6-pixel square of that colour at a random place on a dark texture."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, len(NAMES), (n,), generator=g)
        bg = -0.6 + 0.25 * torch.randn(n, 3, 16, 16, generator=g).clamp(-2, 2)
        pos = torch.randint(0, 11, (n, 2), generator=g)
        for i in range(n):
            y, x = pos[i].tolist()
            bg[i, :, y : y + 6, x : x + 6] = COLOURS[self.labels[i]].view(3, 1, 1)
        self.images = bg.clamp(-1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"video": self.images[i][None], "caption": f"a {NAMES[int(self.labels[i])]} square"}


def colour_of(images: torch.Tensor) -> torch.Tensor:
    """The palette colour of each image ``(n, 3, H, W)``: nearest to the mean of its 36 most saturated pixels."""
    flat = images.clamp(-1, 1).flatten(2).transpose(1, 2)  # n HW 3
    sat = flat.amax(-1) - flat.amin(-1)  # n HW
    top = sat.topk(36, dim=1).indices
    mean = torch.gather(flat, 1, top[..., None].expand(-1, -1, 3)).mean(1)  # n 3
    return torch.cdist(mean, COLOURS).argmin(1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_colour_of_reads_the_training_images() -> None:
    data = Squares(64, seed=3)
    assert torch.equal(colour_of(data.images), data.labels)


def test_tiny_t2i_default_recipe_learns_the_caption_colour(tmp_path: Path) -> None:
    import lightning as L

    from ff_lightning.config import load_config
    from ff_lightning.train import build_system

    torch.manual_seed(0)
    cfg = load_config(ROOT / "experiments/t2i/tiny.yaml", [
        "module.allow_random_movq=true", "optim.lr=2.0e-3", "optim.warmup_steps=20", "optim.ema_decay=null",
        "module.log_samples_every_n_steps=0", "module.num_log_samples=0", f"run.output_dir={tmp_path}",
    ])  # fmt: skip
    assert cfg.module.latent_scale is None and cfg.module.prediction == "v" and cfg.module.dynamic_threshold is None
    module = build_system(cfg)
    module.movq = PoolAutoencoder()
    loader = DataLoader(Squares(512, seed=0), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_steps=200, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", gradient_clip_val=1.0)  # fmt: skip
    t0 = time.time()
    trainer.fit(module, loader)
    train_s = time.time() - t0
    # the latent scale was measured on the training latents (std ~0.4 here: the 0.2 factor on images of std ~0.5)
    latents = module.movq.encode(Squares(256, seed=1).images)
    assert module.m.latent_scale == pytest.approx(1 / float(latents.std()), rel=0.1)
    assert module.hparams["config"]["module"]["latent_scale"] == module.m.latent_scale  # stored with checkpoints

    module.eval()
    prompts = [f"a {NAMES[i % 4]} square" for i in range(32)]
    want = torch.tensor([i % 4 for i in range(32)])
    samples = module.generate(prompts, (8, 8), steps=20, seed=0)[:, 0]  # 32 3 16 16
    acc = float((colour_of(samples) == want).float().mean())
    noise = module.decode_latents(torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    noise_acc = float((colour_of(noise) == want).float().mean())
    print(f"colour accuracy {acc:.2f} (decoded noise {noise_acc:.2f}, chance 0.25); training {train_s:.1f}s")
    assert acc >= 0.75, acc
    assert acc >= noise_acc + 0.4, (acc, noise_acc)


def test_tiny_interpolation_uses_the_t2i_base_latent_scale(tmp_path: Path) -> None:
    from ff_lightning.tiny_models import _base_latent_scale

    for value, want in ((3.68, 3.68), (None, None)):
        path = tmp_path / f"t2i-{value}.ckpt"
        torch.save({"state_dict": {"unet.w": torch.zeros(1)},
                    "hyper_parameters": {"config": {"module": {"latent_scale": value}}}}, path)  # fmt: skip
        assert _base_latent_scale(path) == want
