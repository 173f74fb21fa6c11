"""The daemon limits glibc's malloc arenas before its threads start (edge_asd/daemon/memory.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = "from edge_asd.daemon.memory import limit_malloc_arenas; print(limit_malloc_arenas(2))"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas are glibc's")
def test_glibc_takes_the_limit_and_an_environment_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    run = lambda e: subprocess.run([sys.executable, "-c", CODE], env=e, capture_output=True, text=True, check=True)  # noqa: E731
    assert run(env).stdout.strip() == "True"  # glibc accepted M_ARENA_MAX (an unknown parameter returns 0)
    assert run({**env, "MALLOC_ARENA_MAX": "4"}).stdout.strip() == "False"  # the unit file's setting is left alone
