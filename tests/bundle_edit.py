"""Editing a bundle's zip in place, to make the bad bundles the bundle and daemon tests feed in."""

from __future__ import annotations

import zipfile
from pathlib import Path


def read_members(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_members(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)


def tampered_bundle(src: Path, dst: Path) -> str:
    """Write to ``dst`` a copy of bundle ``src`` with bytes flipped inside a member; returns that member's name.

    The zip stays valid (its CRCs match the new bytes): only the manifest's sha256 can catch it.
    The copy replaces ``dst`` in one rename, as an operator's ``cp`` then ``mv`` would.
    """
    members = read_members(src)
    name = next(n for n in members if n.endswith(".npz"))
    data = bytearray(members[name])
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    members[name] = bytes(data)
    tmp = dst.with_name(f".{dst.name}.tmp")
    write_members(tmp, members)
    tmp.replace(dst)
    return name
