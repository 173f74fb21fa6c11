"""Finding audio files: the one lister behind the DCASE layout, ``edge-asd score``, ``enroll`` and ``file:`` sources."""

from __future__ import annotations

import glob as _glob
from pathlib import Path
from typing import Iterable, Sequence

from edge_asd.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac")


def is_audio_file(path: Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> bool:
    """An audio file by its ending; hidden names are not audio (macOS writes ``._clip.wav`` resource forks)."""
    return path.suffix.lower() in extensions and not path.name.startswith(".") and path.is_file()


def audio_files(
    folder: Path, extensions: Sequence[str] = AUDIO_EXTENSIONS, recursive: bool = True
) -> list[Path]:
    """The audio files in ``folder`` (and below it, when ``recursive``), sorted by path."""
    candidates: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if is_audio_file(p, extensions))


def list_source_files(target: str) -> list[Path]:
    """The audio files a ``file:`` source names, sorted: one file, a folder (recursive) or a glob."""
    p = Path(target)
    if any(c in target for c in "*?["):
        return sorted(f for f in map(Path, _glob.glob(target, recursive=True)) if is_audio_file(f))
    if p.is_dir():
        return audio_files(p)
    return [p] if p.is_file() else []


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given (any name), folders searched recursively for audio files; a folder without any is an error."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = audio_files(p)
            if not found:
                raise UserError(f"{p}: folder holds no .wav or .flac files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return files
