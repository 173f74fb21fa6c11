"""The machine types, one module each, and the name-to-machine table."""

from __future__ import annotations

from edge_asd.synth.machines.base import Machine
from edge_asd.synth.machines.bearing import Bearing
from edge_asd.synth.machines.fan import Fan
from edge_asd.synth.machines.gearbox import Gearbox
from edge_asd.synth.machines.pump import Pump
from edge_asd.synth.machines.valve import Valve

MACHINES: dict[str, Machine] = {m.name: m for m in (Fan(), Pump(), Gearbox(), Bearing(), Valve())}
MACHINE_TYPES: tuple[str, ...] = tuple(MACHINES)
