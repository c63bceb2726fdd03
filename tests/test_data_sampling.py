"""Clip sampling: stride and target-fps frame indices (read back from pixels), starts, crops, seeded randomness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ff_lightning.data import DataConfig, build_dataset
from ff_lightning.data.fixtures import decode_indices, write_webvid_layout
from ff_lightning.data.sampling import clip_offsets, frames_needed, plan_clip, sample_rng
from ff_lightning.data.transforms import frames_to_clip, resize_crop


@pytest.fixture(scope="module")
def clip30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 30-frame, 30 fps video whose frame i encodes i."""
    root = tmp_path_factory.mktemp("fps")
    write_webvid_layout(root, num_videos=1, num_frames=30, fps=30.0)
    return root


def _cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(**{"source": "webvid", "root": str(root), "val_fraction": 1.0, "size": [16, 16], **kw})


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"num_frames": 4, "stride": 3, "eval_start": "first"}, [0, 3, 6, 9]),
        ({"num_frames": 4, "stride": 3, "eval_start": "center"}, [10, 13, 16, 19]),  # 30 - 10 = 20 spare, start 10
        ({"num_frames": 4, "fps": 10.0, "eval_start": "first"}, [0, 3, 6, 9]),
        ({"num_frames": 4, "fps": 12.0, "eval_start": "first"}, [0, 3, 5, 8]),  # 2.5 source frames apart
        ({"num_frames": 3, "fps": 60.0, "eval_start": "first"}, [0, 1, 1]),  # upsampling repeats frames
    ],
)
def test_stride_and_fps_pick_the_right_frames(clip30: Path, kw: dict, expected: list[int]) -> None:
    sample = build_dataset(_cfg(clip30, **kw), "val")[0]
    assert sample["meta"]["indices"] == expected
    assert decode_indices(sample["video"]) == expected
    assert sample["meta"]["source_fps"] == pytest.approx(30.0)
    assert sample["meta"]["num_source_frames"] == 30
    if "fps" in kw:
        assert sample["meta"]["fps"] == kw["fps"] and sample["meta"]["stride"] is None
    else:
        assert sample["meta"]["stride"] == kw["stride"] and sample["meta"]["fps"] is None


def test_random_start_is_seeded_per_epoch_and_index(clip30: Path) -> None:
    ds = build_dataset(_cfg(clip30, num_frames=4, stride=2, val_fraction=0.0), "train")
    starts = [ds[(e, 0)]["meta"]["start"] for e in range(10)]
    assert len(set(starts)) > 1 and all(0 <= s <= 30 - 7 for s in starts)
    again = build_dataset(_cfg(clip30, num_frames=4, stride=2, val_fraction=0.0), "train")
    a, b = ds[(3, 0)], again[(3, 0)]
    assert a["meta"]["start"] == b["meta"]["start"] and torch.equal(a["video"], b["video"])
    assert decode_indices(a["video"]) == a["meta"]["indices"]
    other_seed = build_dataset(_cfg(clip30, num_frames=4, stride=2, val_fraction=0.0, seed=1), "train")
    assert [other_seed[(e, 0)]["meta"]["start"] for e in range(10)] != starts


def test_plan_clip_rules() -> None:
    assert list(clip_offsets(4, 2.5)) == [0, 3, 5, 8]
    assert plan_clip(9, 4, stride=3) is None  # needs 10 frames
    assert plan_clip(10, 4, stride=3, start="center").indices == (0, 3, 6, 9)
    assert plan_clip(10, 2, min_frames=11) is None
    assert frames_needed(8, fps=12.5, source_fps=25.0) == 15
    with pytest.raises(ValueError, match="source frame rate"):
        plan_clip(10, 2, fps=5.0, source_fps=0.0)
    r1, r2 = sample_rng(0, 1, 2), sample_rng(0, 1, 2)
    assert r1.integers(1 << 30) == r2.integers(1 << 30)


def test_resize_shorter_side_and_crop() -> None:
    frames = np.zeros((2, 40, 100, 3), dtype=np.uint8)
    frames[:, :, 50:] = 255  # right half white
    clip, (top, left) = frames_to_clip(frames, (20, 20))
    assert clip.shape == (2, 3, 20, 20) and clip.dtype == torch.float32 and (top, left) == (0, 15)
    assert clip.min() >= -1 and clip.max() <= 1
    x = torch.arange(2 * 3 * 30 * 40, dtype=torch.float32).reshape(2, 3, 30, 40)
    out, (t, l_) = resize_crop(x, (10, 10), random_crop=True, rng=np.random.default_rng(0))
    assert out.shape == (2, 3, 10, 10) and 0 <= l_ <= 3 and t == 0  # 30x40 -> 10x13
    tall, _ = resize_crop(x, (30, 10))  # target taller than wide: scale by height
    assert tall.shape == (2, 3, 30, 10)


def test_overstated_header_frame_count_is_replanned(clip30: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ff_lightning.data.base as base
    from ff_lightning.data.video_io import VideoInfo

    monkeypatch.setattr(base, "probe_video", lambda path: VideoInfo(num_frames=90, fps=30.0, width=48, height=32))
    sample = build_dataset(_cfg(clip30, num_frames=4, stride=2), "val")[0]  # centred on 90 frames: past the end
    assert sample["meta"]["num_source_frames"] == 30 and not sample["skipped"]
    assert sample["meta"]["indices"] == [11, 13, 15, 17] and decode_indices(sample["video"]) == [11, 13, 15, 17]
