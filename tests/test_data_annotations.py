"""Bad annotation entries of the real-layout loaders: skipped and counted with file and line, or one-line errors.

Fixture files are written by hand in each dataset's real layout: WebVid ``results_2M_train.csv``, UCF-101
``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt``, MSR-VTT ``MSRVTT_data.json``. Listing a dataset reads
only these files (videos are opened when a sample is loaded), except where a test loads a sample.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ff_lightning.data import DataConfig, build_dataset
from ff_lightning.data.annotations import AnnotationError
from ff_lightning.data.base import NoUsableSamplesError
from ff_lightning.data.fixtures import index_frames
from ff_lightning.data.video_io import write_video

HEADER = "videoid,contentUrl,duration,page_dir,name\n"


def _row(vid: str, name: str = "") -> str:
    return f"{vid},https://example.invalid/{vid}.mp4,PT00H00M10S,006001_006050,{name or 'caption of ' + vid}\n"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "annotation" in r.getMessage()]


def test_webvid_bad_rows_skipped_with_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv_path = tmp_path / "results_2M_train.csv"
    csv_path.write_text(
        HEADER
        + _row("1001", '"a dog, running"')  # line 2: quoted comma, fine
        + "1002,https://example.invalid/1002.mp4,PT00H00M10S\n"  # line 3: short row (was a TypeError)
        + _row("1003").rstrip("\n") + ",extra\n"  # line 4: one field too many
        + "1004,https://example.invalid/1004.mp4,PT00H00M10S,006001_006050,\n"  # line 5: empty name
        + _row("1005", '"an unterminated quote')  # line 6: swallowed the rest of the file before
        + _row("1006")  # line 7: kept
        + "\n"  # a blank line is not an entry
        + _row("1007")  # line 9: kept
    )  # fmt: skip
    write_video(tmp_path / "006001_006050" / "1006.mp4", index_frames(6), 8.0)
    cfg = DataConfig(source="webvid", root=str(tmp_path), val_fraction=0.0, num_frames=2, size=[16, 16])
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg, "train")
    assert [r.key for r in ds.records] == ["1001", "1006", "1007"]
    assert ds.records[0].caption == "a dog, running"
    assert ds.skipped_annotations == 4
    where = [p.split(": ", 1)[0] for p in ds.annotation_problems]
    assert where == [f"{csv_path}:{n}" for n in (3, 4, 5, 6)]
    assert "3 fields, the header has 5" in ds.annotation_problems[0]
    assert "empty name" in ds.annotation_problems[2] and "unterminated quote" in ds.annotation_problems[3]
    (warning,) = _warnings(caplog)  # one summary line with the count and the first reasons
    assert "skipped 4 unusable annotation entries" in warning and f"{csv_path}:3" in warning
    assert ds[1]["meta"]["key"] == "1006"  # the rows after the broken quote load as usual


def test_webvid_every_row_bad_or_not_utf8_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "results_2M_train.csv").write_text(HEADER + "1,u\n2,u\n")
    cfg = DataConfig(source="webvid", root=str(tmp_path), val_fraction=0.0)
    with pytest.raises(NoUsableSamplesError, match=r"2 skipped\).*results_2M_train.csv:2: 2 fields"):
        build_dataset(cfg, "train")
    (tmp_path / "results_2M_train.csv").write_bytes(HEADER.encode() + b"1,u,d,p,caf\xe9\n")
    with pytest.raises(AnnotationError, match=r"results_2M_train.csv: not UTF-8"):
        build_dataset(cfg, "train")


def _ucf(root: Path, train_lines: list[str], class_ind: str = "1 ApplyEyeMakeup\n2 YoYo\n") -> Path:
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text(class_ind)
    (lists / "trainlist01.txt").write_text("".join(line + "\n" for line in train_lines))
    (lists / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\nNoSuchClass/v_NoSuchClass_g01_c01.avi\n")
    return lists


def test_ucf101_bad_labels_skipped_with_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lists = _ucf(
        tmp_path,
        [
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",  # line 1: fine
            "YoYo/v_YoYo_g08_c01.avi 2",  # line 2: fine
            "YoYo/v_YoYo_g09_c01.avi two",  # line 3: not an integer (was a bare ValueError)
            "YoYo/v_YoYo_g10_c01.avi 0",  # line 4: 0 (labels are 1-based; was silently -1)
            "YoYo/v_YoYo_g11_c01.avi 3",  # line 5: out of range (was silently 2)
            "YoYo/v_YoYo_g12_c01.avi 1",  # line 6: names ApplyEyeMakeup, folder says YoYo (was silently used)
            "Unknown/v_Unknown_g08_c01.avi 1",  # line 7: class not in classInd.txt (was an error for the file)
        ],
    )
    cfg = DataConfig(source="ucf101", root=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        train = build_dataset(cfg, "train")
    assert [(r.key, r.label) for r in train.records] == [("v_ApplyEyeMakeup_g08_c01", 0), ("v_YoYo_g08_c01", 1)]
    assert train.skipped_annotations == 5
    trainlist = lists / "trainlist01.txt"
    assert [p.split(": ", 1)[0] for p in train.annotation_problems] == [f"{trainlist}:{n}" for n in range(3, 8)]
    reasons = " | ".join(train.annotation_problems)
    for fragment in (
        "'two' is not an integer",
        "label 0 is outside 1..2",
        "label 3 is outside 1..2",
        "label 1 is 'ApplyEyeMakeup' but the video is in the 'YoYo' folder",
        "'Unknown' is not in",
    ):
        assert fragment in reasons
    assert len(_warnings(caplog)) == 1
    test = build_dataset(cfg, "test")
    assert [r.label for r in test.records] == [1] and test.skipped_annotations == 1
    assert test.annotation_problems[0].startswith(f"{lists / 'testlist01.txt'}:2: ")


@pytest.mark.parametrize(
    "class_ind, fragment",
    [
        ("1 ApplyEyeMakeup\none YoYo\n", "classInd.txt:2: expected '<index> <ClassName>'"),
        ("1 ApplyEyeMakeup\n1 YoYo\n", "classInd.txt:2: class 'YoYo' or index 1 is listed twice"),
        ("1 ApplyEyeMakeup\n3 YoYo\n", "class indices must be 1..2 without gaps"),
    ],
)
def test_ucf101_broken_class_index_is_one_error(tmp_path: Path, class_ind: str, fragment: str) -> None:
    _ucf(tmp_path, ["YoYo/v_YoYo_g08_c01.avi 2"], class_ind)
    with pytest.raises(AnnotationError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        build_dataset(DataConfig(source="ucf101", root=str(tmp_path)), "train")


def test_msrvtt_bad_records_skipped_with_file_and_index(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = {
        "info": {},
        "videos": [
            {"video_id": "video0", "split": "train", "id": 0},
            {"video_id": "video1", "split": "train", "id": 1},  # its only sentence is null: no usable caption
            {"split": "train", "id": 2},  # no video_id (was a KeyError)
            {"video_id": "video3", "split": "train", "id": 3},  # no sentence at all (trained on "" before)
        ],
        "sentences": [
            {"caption": "a man is cooking", "video_id": "video0", "sen_id": 0},
            {"video_id": "video0", "sen_id": 1},  # no caption (was a KeyError)
            {"caption": "a woman sings", "sen_id": 2},  # no video_id (was a KeyError)
            {"caption": None, "video_id": "video1", "sen_id": 3},  # null caption (became the caption "None")
            {"caption": "someone talks", "video_id": "video0", "sen_id": 4},
        ],
    }
    ann = tmp_path / "MSRVTT_data.json"
    ann.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(DataConfig(source="msrvtt", root=str(tmp_path)), "train")
    assert [r.key for r in ds.records] == ["video0"]
    assert ds.records[0].captions == ("a man is cooking", "someone talks")
    assert all("None" not in c for r in ds.records for c in r.captions)
    assert ds.skipped_annotations == 6
    reasons = ds.annotation_problems[:5]
    assert reasons[0] == f"{ann}: sentences[1]: no 'caption'"
    assert reasons[1] == f"{ann}: sentences[2]: no 'video_id'"
    assert reasons[2] == f"{ann}: sentences[3]: caption is None, not a non-empty text"
    assert reasons[3] == f"{ann}: videos[2]: no 'video_id'"
    assert reasons[4] == f"{ann}: video 'video1': no usable caption in sentences"
    (warning,) = _warnings(caplog)
    assert "skipped 6 unusable annotation entries" in warning and "(+1 more)" in warning


def test_msrvtt_unreadable_json_is_one_error_naming_the_file(tmp_path: Path) -> None:
    ann = tmp_path / "MSRVTT_data.json"
    ann.write_text('{"videos": [{"video_id": "video0"}],\n "sentences": [ {"caption": "x", }\n')
    with pytest.raises(AnnotationError) as e:
        build_dataset(DataConfig(source="msrvtt", root=str(tmp_path)), "train")
    message = str(e.value)
    assert message.startswith(f"{ann}:2: not valid JSON") and "\n" not in message
    ann.write_text('[{"video_id": "video0"}]')
    with pytest.raises(AnnotationError, match="expected an object with 'videos' and 'sentences', got a list"):
        build_dataset(DataConfig(source="msrvtt", root=str(tmp_path)), "train")
