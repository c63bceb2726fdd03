"""UCF-101 zero-shot benchmark (paper Table 1: IS with C3D, FVD with I3D), protocol ``ucf101_zeroshot_v1``.

Prompts: one per class, ``"a video of {class name in words}"`` (``ApplyEyeMakeup`` -> ``"a video of apply eye
makeup"``), class-balanced over the 101 classes (:func:`~ff_lightning.evaluation.runner.class_balanced_prompts`).
Class names come from ``<data root>/ucfTrainTestlist/classInd.txt`` when a data root is given (checked against the
built-in list), else from :data:`UCF101_CLASSES` (the 101 names in ``classInd.txt`` order), so IS can be computed
without the dataset. FVD needs the dataset for its real statistics (``--data-root``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ff_lightning.evaluation.generators import NamedGenerator
from ff_lightning.evaluation.protocol import LoadedProtocol, load_protocol
from ff_lightning.evaluation.runner import (
    PromptSet,
    RunOptions,
    RunOutput,
    class_balanced_prompts,
    make_generator,
    run_benchmark,
)

__all__ = ["UCF101_CLASSES", "evaluate_ucf101", "ucf101_class_names", "ucf101_prompts"]

log = logging.getLogger(__name__)

#: the 101 UCF-101 class names in ``classInd.txt`` order (index + 1 is the file's class number)
UCF101_CLASSES: tuple[str, ...] = (
    "ApplyEyeMakeup",
    "ApplyLipstick",
    "Archery",
    "BabyCrawling",
    "BalanceBeam",
    "BandMarching",
    "BaseballPitch",
    "Basketball",
    "BasketballDunk",
    "BenchPress",
    "Biking",
    "Billiards",
    "BlowDryHair",
    "BlowingCandles",
    "BodyWeightSquats",
    "Bowling",
    "BoxingPunchingBag",
    "BoxingSpeedBag",
    "BreastStroke",
    "BrushingTeeth",
    "CleanAndJerk",
    "CliffDiving",
    "CricketBowling",
    "CricketShot",
    "CuttingInKitchen",
    "Diving",
    "Drumming",
    "Fencing",
    "FieldHockeyPenalty",
    "FloorGymnastics",
    "FrisbeeCatch",
    "FrontCrawl",
    "GolfSwing",
    "Haircut",
    "Hammering",
    "HammerThrow",
    "HandstandPushups",
    "HandstandWalking",
    "HeadMassage",
    "HighJump",
    "HorseRace",
    "HorseRiding",
    "HulaHoop",
    "IceDancing",
    "JavelinThrow",
    "JugglingBalls",
    "JumpingJack",
    "JumpRope",
    "Kayaking",
    "Knitting",
    "LongJump",
    "Lunges",
    "MilitaryParade",
    "Mixing",
    "MoppingFloor",
    "Nunchucks",
    "ParallelBars",
    "PizzaTossing",
    "PlayingCello",
    "PlayingDaf",
    "PlayingDhol",
    "PlayingFlute",
    "PlayingGuitar",
    "PlayingPiano",
    "PlayingSitar",
    "PlayingTabla",
    "PlayingViolin",
    "PoleVault",
    "PommelHorse",
    "PullUps",
    "Punch",
    "PushUps",
    "Rafting",
    "RockClimbingIndoor",
    "RopeClimbing",
    "Rowing",
    "SalsaSpin",
    "ShavingBeard",
    "Shotput",
    "SkateBoarding",
    "Skiing",
    "Skijet",
    "SkyDiving",
    "SoccerJuggling",
    "SoccerPenalty",
    "StillRings",
    "SumoWrestling",
    "Surfing",
    "Swing",
    "TableTennisShot",
    "TaiChi",
    "TennisSwing",
    "ThrowDiscus",
    "TrampolineJumping",
    "Typing",
    "UnevenBars",
    "VolleyballSpiking",
    "WalkingWithDog",
    "WallPushups",
    "WritingOnBoard",
    "YoYo",
)


def ucf101_class_names(data_root: str | Path | None, split_index: int = 1) -> tuple[list[str], str]:
    """Class names in class-index order and where they came from."""
    if data_root is not None:
        from ff_lightning.data.ucf101 import read_class_index

        path = Path(data_root) / "ucfTrainTestlist" / "classInd.txt"
        if path.is_file():
            index = read_class_index(path)
            names = [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])]
            if len(names) == len(UCF101_CLASSES) and names != list(UCF101_CLASSES):
                log.warning("%s differs from the built-in UCF-101 class list; using the file", path)
            return names, str(path.resolve())
        log.warning("%s not found; using the built-in UCF-101 class list", path)
    return list(UCF101_CLASSES), "built-in UCF101_CLASSES (classInd.txt order)"


def ucf101_prompts(loaded: LoadedProtocol, data_root: str | Path | None) -> PromptSet:
    """The protocol's class-balanced prompts."""
    p = loaded.protocol
    names, source = ucf101_class_names(data_root, p.prompts.split_index)
    ps = class_balanced_prompts(names, p.num_samples, p.prompts.template, p.seed, balance=p.prompts.balance)
    ps.source.update({"source": "ucf101_classes", "class_names": source, "template": p.prompts.template})
    return ps


def evaluate_ucf101(
    generator: str | NamedGenerator | None = None,
    *,
    checkpoint: str | Path | None = None,
    protocol: str | Path | None = None,
    overrides: list[str] | None = None,
    options: RunOptions | None = None,
) -> RunOutput:
    """Run the UCF-101 protocol (default ``experiments/eval/ucf101_zeroshot_v1.yaml``) with a registered generator
    name, a :class:`NamedGenerator` or a keyframe ``checkpoint``; returns the written result."""
    opts = options or RunOptions()
    loaded = load_protocol(protocol, overrides or [], benchmark="ucf101")
    prompts = ucf101_prompts(loaded, opts.data_root)  # data problems show before a checkpoint is loaded
    gen = generator if isinstance(generator, NamedGenerator) else make_generator(loaded, generator, checkpoint, opts)
    return run_benchmark(loaded, gen, prompts, opts)
