"""What a machine or device id may be: ids become MQTT topic levels and folder names (evidence),
so no '/', '+', '#', spaces or dots. One rule for the daemon's configuration and ``edge-asd score``."""

from __future__ import annotations

import re

ID_RE = re.compile(r"[A-Za-z0-9_-]+")
