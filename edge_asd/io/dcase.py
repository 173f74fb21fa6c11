"""DCASE Task 2 file names and data-set layout.

Names seen in the DCASE 2021-2024 development and evaluation sets::

    section_00_source_train_normal_0000_vel_6_loc_A.wav      (2022 dev, attributes)
    section_00_target_test_anomaly_0012_m-n_W.wav             (2022 dev test)
    section_00_source_train_normal_0000.wav                   (no attributes)
    section_00_test_0000.wav / section_00_0000.wav            (evaluation test, unlabelled)

Attributes are ``key_value`` pairs after the clip index; keys and values may
themselves contain ``-`` but not ``_``. An odd number of tokens (e.g. a bare
``noAttribute``) is kept as the raw string only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edge_asd.errors import DataError
from edge_asd.io.files import audio_files


# What a labelled name may say (CONTRACT.md's data layout); writers check against these.
DOMAINS = ("source", "target")
SPLITS = ("train", "test")
LABELS = ("normal", "anomaly")
# Two digits, as _LABELLED reads a section; ASCII ones, since \d also matches other scripts' digits.
SECTION_ID = re.compile(r"[0-9]{2}")

_LABELLED = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attrs>.+))?$"
)
_UNLABELLED = re.compile(
    r"^section_(?P<section>\d{2})(?:_(?P<domain>source|target))?(?:_(?P<split>test))?_(?P<index>\d+)(?:_(?P<attrs>.+))?$"
)


@dataclass(frozen=True)
class ClipInfo:
    """What a DCASE file name says about a clip."""

    path: Path
    machine: str
    section: str  # two digits, "00"
    domain: str | None  # "source", "target", or None when the name does not say
    split: str  # "train" or "test"
    label: str | None  # "normal", "anomaly", or None for unlabelled evaluation clips
    index: str
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    attribute_string: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_anomaly(self) -> bool:
        return self.label == "anomaly"


def _parse_attributes(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    tokens = raw.split("_")
    if len(tokens) % 2:
        return {}
    return {tokens[i]: tokens[i + 1] for i in range(0, len(tokens), 2)}


def parse_name(path: str | Path, machine: str | None = None) -> ClipInfo:
    """Parse a DCASE clip file name; the machine type comes from ``DATA/<machine>/<split>/``.

    Raises :class:`DataError` naming the file when the name is not a DCASE name.
    """
    path = Path(path)
    stem = path.stem
    if machine is None:
        machine = path.parent.parent.name if path.parent.name in ("train", "test") else ""
    m = _LABELLED.match(stem)
    if m:
        return ClipInfo(
            path=path,
            machine=machine,
            section=m["section"],
            domain=m["domain"],
            split=m["split"],
            label=m["label"],
            index=m["index"],
            attributes=_parse_attributes(m["attrs"]),
            attribute_string=m["attrs"] or "",
        )
    m = _UNLABELLED.match(stem)
    if m:
        split = m["split"] or (path.parent.name if path.parent.name in ("train", "test") else "test")
        return ClipInfo(
            path=path,
            machine=machine,
            section=m["section"],
            domain=m["domain"],
            split=split,
            label=None,
            index=m["index"],
            attributes=_parse_attributes(m["attrs"]),
            attribute_string=m["attrs"] or "",
        )
    raise DataError(
        f"{path}: not a DCASE clip name (expected section_XX_<source|target>_<train|test>_<normal|anomaly>_NNNN[_attributes].wav)"
    )


def clip_name(section: str, domain: str, split: str, label: str, index: int) -> str:
    """The labelled DCASE name of a clip without attributes, as :func:`parse_name` reads it back."""
    return f"section_{section}_{domain}_{split}_{label}_{index:04d}.wav"


def list_machines(data_root: str | Path) -> list[str]:
    """Machine types under DATA: the folders that hold a ``train`` or ``test`` folder."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))


def list_clips(data_root: str | Path, machine: str, split: str) -> list[ClipInfo]:
    """Every audio clip of ``DATA/<machine>/<split>/``, parsed, sorted by name."""
    folder = Path(data_root) / machine / split
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected the DCASE layout DATA/<machine>/{split}/)")
    clips = [parse_name(p, machine) for p in audio_files(folder, recursive=False)]
    if not clips:
        raise DataError(f"{folder}: no .wav or .flac clips")
    return clips

