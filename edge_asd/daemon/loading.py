"""``load_config``: the daemon's configuration read and validated (:mod:`edge_asd.daemon.config`,
which knows no audio devices), then its ``mic:`` sources checked against PortAudio's device list
(:mod:`edge_asd.daemon.sources`)."""

from __future__ import annotations

from pathlib import Path

from edge_asd.daemon.config import DaemonConfig, read_config
from edge_asd.daemon.sources import check_mic_devices


def load_config(
    path: str | Path,
    env: dict[str, str] | None = None,
    check_devices: bool = True,
    require_credentials: bool = True,
) -> DaemonConfig:
    """:func:`~edge_asd.daemon.config.read_config`, then (``check_devices``) every ``mic:`` device looked up.

    Any problem is one :class:`~edge_asd.errors.ConfigError` naming the key, the device's included.
    """
    cfg = read_config(path, env, require_credentials=require_credentials)
    if check_devices:
        check_mic_devices(cfg)
    return cfg
