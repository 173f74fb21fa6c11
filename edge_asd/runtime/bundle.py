"""The deployment bundle: one file a user copies to a device.

A bundle is an uncompressed zip (members are read in place, and ONNX models do
not compress) holding ``manifest.json`` and the files it lists: the extractor
ONNX model(s), optional TensorRT engines, and detector state as ``.npz``.
The manifest states every number scoring needs and the sha256 of every member.

Loading verifies the schema version, that every listed member is present, that
nothing unlisted is, and every checksum; ``.npz`` members are loaded with
``allow_pickle=False``. Nothing in a bundle is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
import dataclasses
from typing import Any, Mapping

import numpy as np

from edge_asd.errors import BundleError, ManifestError
from edge_asd.runtime.manifest import SCHEMA_VERSION, Manifest

MANIFEST = "manifest.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


@dataclass
class Bundle:
    """An opened, verified bundle.

    Members stay on disk until asked for: an EfficientNet-B0 bundle holds two
    copies of the extractor (whole-segment and split graphs, ~70 MB), and a
    device that held them all while it built its sessions would need that much
    more memory at start than it runs with. :meth:`read` checks each member's
    sha256 again, so a file replaced after :func:`open_bundle` is refused
    rather than half-trusted.
    """

    path: Path
    manifest: Manifest

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def read(self, name: str) -> bytes:
        digest = self.manifest.files.get(name)
        if digest is None:
            raise BundleError(f"{self.path}: manifest names no member {name!r}")
        try:
            with zipfile.ZipFile(self.path) as zf:
                data = _read_member(zf, name, self.path)
        except KeyError:
            raise BundleError(f"{self.path}: member {name} is missing") from None
        except zipfile.BadZipFile:
            raise BundleError(f"{self.path}: not a bundle (not a zip archive, or truncated)") from None
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot read bundle ({exc.strerror or exc})") from None
        if sha256(data) != digest:
            raise _mismatch(self.path, name)
        return data

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        try:
            with np.load(io.BytesIO(self.read(name)), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"{self.path}: member {name} is not a valid array file ({exc})") from None

    def members(self) -> dict[str, bytes]:
        return {name: self.read(name) for name in self.manifest.files}


def new_bundle_id(machine_type: str, files: Mapping[str, bytes]) -> str:
    """Readable and content-addressed: the same content gives the same id."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        h.update(sha256(files[name]).encode())
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", machine_type) or "bundle"
    return f"{slug}-{h.hexdigest()[:12]}"


def write_bundle(out: str | Path, manifest: Manifest | Mapping[str, Any], files: Mapping[str, bytes]) -> Path:
    """Write ``manifest`` + ``files`` atomically to ``out``.

    Fills in ``files`` (checksums), ``schema_version``, ``created`` and, when
    empty, ``bundle_id``. The file is written next to ``out`` and renamed, so a
    daemon reading ``out`` sees the old or the new bundle, never half of one.
    A mapping (a test's edited manifest) is checked as :meth:`Manifest.from_dict` reads one.
    """
    out = Path(out)
    for name in files:
        if not _safe_member(name) or name == MANIFEST:
            raise ValueError(f"bad bundle member name {name!r}")
    filled = {
        "schema_version": SCHEMA_VERSION,
        "created": (manifest.created if isinstance(manifest, Manifest) else manifest.get("created"))
        or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {name: sha256(data) for name, data in sorted(files.items())},
    }
    if isinstance(manifest, Manifest):
        manifest = dataclasses.replace(manifest, **filled)
    else:
        manifest = Manifest.from_dict({"bundle_id": "", **manifest, **filled})
    if not manifest.bundle_id:
        manifest = dataclasses.replace(manifest, bundle_id=new_bundle_id(manifest.machine_type, files))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
            for name, data in sorted(files.items()):
                zf.writestr(name, data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def open_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle; any problem is a :class:`BundleError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if MANIFEST not in names:
                raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
            try:
                manifest = json.loads(_read_member(zf, MANIFEST, path))
            except (ValueError, UnicodeDecodeError) as exc:
                raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
            try:
                manifest = Manifest.from_dict(manifest)
            except ManifestError as exc:
                raise BundleError(f"{path}: {exc}") from None
            listed = manifest.files
            extra = sorted(set(names) - set(listed) - {MANIFEST})
            if extra:
                raise BundleError(f"{path}: member {extra[0]} is not listed in the manifest")
            for name, digest in listed.items():
                if not _safe_member(name):
                    raise BundleError(f"{path}: unsafe member name {name!r}")
                if name not in names:
                    raise BundleError(f"{path}: member {name} is missing")
                if _member_sha256(zf, name, path) != digest:
                    raise _mismatch(path, name)
    except zipfile.BadZipFile:
        raise BundleError(f"{path}: not a bundle (not a zip archive, or truncated)") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read bundle ({exc.strerror or exc})") from None
    bundle = Bundle(path, manifest)
    _check_references(bundle)
    return bundle


def _mismatch(path: Path, name: str) -> BundleError:
    return BundleError(f"{path}: checksum mismatch for member {name} (the bundle is corrupt or was modified)")


def _member_sha256(zf: zipfile.ZipFile, name: str, path: Path) -> str:
    """A member's digest, hashed in blocks: verifying a bundle must not need its size in memory."""
    h = hashlib.sha256()
    try:
        with zf.open(name) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except zipfile.BadZipFile:
        # The archive's directory was read, so the zip is whole; what zipfile refuses now is this
        # member's bytes or its local header (its CRC-32, a name that no longer matches): a damaged
        # member, which the user knows as a checksum mismatch, not "not a zip archive".
        raise _mismatch(path, name) from None
    return h.hexdigest()


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """A member's bytes; a damaged member is a checksum mismatch (see :func:`_member_sha256`)."""
    try:
        return zf.read(name)
    except zipfile.BadZipFile:
        raise _mismatch(path, name) from None


def _check_references(bundle: Bundle) -> None:
    m = bundle.manifest
    if not m.members:
        raise BundleError(f"{bundle.path}: manifest lists no extractor members")
    for i, member in enumerate(m.members):
        # a numpy-feature member (the plain system) has detector state but no model file
        for key, name in (("state", member.state),) if member.is_plain else (("model", member.model), ("state", member.state)):
            if name not in m.files:
                raise BundleError(f"{bundle.path}: member {i} refers to {key} {name!r}, which the bundle does not hold")
    for section in m.sections:
        if section not in m.thresholds:
            raise BundleError(f"{bundle.path}: no threshold for section {section}")


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()
