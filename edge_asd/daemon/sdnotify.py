"""systemd's notify protocol (sd_notify(3)) with the standard library only.

``Type=notify`` units learn that the daemon is ready (``READY=1``), reloading
(``RELOADING=1``), stopping (``STOPPING=1``) and still alive (``WATCHDOG=1``,
which ``WatchdogSec=`` requires) from datagrams on the AF_UNIX socket named in
``$NOTIFY_SOCKET``. A name starting with ``@`` is in the abstract namespace
(a leading NUL byte). Outside systemd the variable is unset and every call is a
no-op, so the daemon runs the same from a shell.

libsystemd is not a dependency for this: the protocol is one datagram per call.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("edge_asd.sdnotify")  # the name journals show, kept from before the subpackages


class Notifier:
    """Sends state changes to systemd, if it is listening."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._failed = False
        self.watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half the timeout systemd set (sd_watchdog_enabled(3)); None if none."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when not under systemd or sending failed."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self._address)
        except OSError as exc:
            # A watchdog ping that cannot be sent means systemd will restart us:
            # say why once, not on every ping.
            if not self._failed:
                log.warning("cannot notify systemd at %r: %s", self._address, exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload to this message.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    # systemd also allows vsock addresses ("vsock:CID:PORT"); a service on a
    # device never gets one, and guessing would only hide a misconfiguration.
    log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX path or abstract name; not notifying systemd", value)
    return None


def _watchdog_usec(env) -> int | None:
    value = env.get("WATCHDOG_USEC")
    if not value:
        return None
    pid = env.get("WATCHDOG_PID")
    # The watchdog is meant for the main process only: a child that inherited
    # the environment must not ping on its behalf.
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(value)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; not pinging the watchdog", value)
        return None
    return usec if usec > 0 else None
