"""TensorBoard: an ``ff train`` run's event file holds the losses, the learning rate, sample videos (animated GIFs;
Pillow encodes them where moviepy cannot) and the hyperparameters (the flattened config) with the final metrics."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ff_lightning import tb_logging
from ff_lightning.config import load_config
from ff_lightning.tb_logging import VideoSummaryWriter
from ff_lightning.train import fit

REPO = Path(__file__).resolve().parents[1]
FRAMES = 3


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ff_lightning.data.bundled import build_all

    cache = tmp_path_factory.getbasetemp() / "ff_bundled_32"
    build_all(cache, reduced=True, size=32, progress=False, sets=["footage"])
    return cache


def _events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _gif_frames(data: bytes) -> tuple[int, tuple[int, int]]:
    assert data[:6] == b"GIF89a"
    img = Image.open(io.BytesIO(data))
    return img.n_frames, img.size


def test_run_logs_losses_lr_videos_and_hparams_with_final_metrics(data_cache: Path, tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "experiments" / "decoder" / "base.yaml",
        [
            f"data.cache_dir={data_cache}", f"data.num_frames={FRAMES}", "data.size=[32,32]", "data.batch_size=1",
            "data.max_samples=2", "data.max_val_samples=1", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.max_steps=2", "trainer.enable_progress_bar=false", "trainer.check_val_every_n_epoch=1",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", f"run.output_dir={tmp_path}",
            "module.allow_random_movq=true", "module.log_video_every_n_steps=1", "module.num_log_samples=1",
            "model.variant=conv3x1x1",
        ],
    )  # fmt: skip
    result = fit(cfg)
    ea = _events(result.run_dir)
    scalars = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/rec_loss", "lr-Adam", "val/psnr"} <= scalars, scalars
    # sample videos: target | reconstruction side by side, every frame of the clip
    images = set(ea.Tags()["images"])
    assert {"train/reconstruction", "val/reconstruction"} <= images, images
    frames, (width, height) = _gif_frames(ea.Images("train/reconstruction")[0].encoded_image_string)
    assert frames == FRAMES and (width, height) == (64, 32)
    # hyperparameters: the flattened config with the final metrics
    content = ea.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"final/train/loss", "final/val/psnr"} <= metric_tags, metric_tags
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/variant"].string_value == "conv3x1x1"
    assert start.hparams["trainer/max_steps"].number_value == 2
    assert start.hparams["system"].string_value == "decoder"
    final = ea.Scalars("final/train/loss")
    assert len(final) == 1 and final[0].step == 2
    assert final[0].value == pytest.approx(ea.Scalars("train/loss")[-1].value)


def test_video_summary_writer_encodes_gif_without_moviepy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tb_logging, "moviepy_works", lambda: False)
    writer = VideoSummaryWriter(str(tmp_path))
    video = torch.zeros(2, 4, 3, 8, 6)  # N T C H W
    for t in range(4):
        video[:, t] = t / 3  # frames get brighter
    writer.add_video("clip", video, global_step=5, fps=2)
    writer.close()
    ea = _events(tmp_path)
    event = ea.Images("clip")[0]
    assert event.step == 5
    frames, size = _gif_frames(event.encoded_image_string)
    assert frames == 4 and size == (12, 8)  # the two clips side by side
    img = Image.open(io.BytesIO(event.encoded_image_string))
    levels = []
    for t in range(4):
        img.seek(t)
        levels.append(img.convert("L").getpixel((0, 0)))
    assert levels == sorted(levels) and levels[0] == 0 and levels[-1] == 255
