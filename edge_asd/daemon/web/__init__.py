"""The read-only web page on the device: live scores, alerts, health and evidence clips.

``server.WebServer`` runs beside the daemon's pipelines in the same process; the
daemon only calls its non-blocking hooks (``score``, ``alert``, ``source``,
``stats``, ``evidence``), so a slow or hostile browser can never hold up
capture or scoring.
"""

from edge_asd.daemon.web.server import MachineScoring, WebLinks, WebServer, start_web

__all__ = ["MachineScoring", "WebLinks", "WebServer", "start_web"]
