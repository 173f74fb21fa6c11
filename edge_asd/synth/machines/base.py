"""What every machine type shares: operating points, domains, sections, the
``Machine`` base each type implements, the housing pass that ends every
machine's sound, and the helpers that name operating points in file names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from edge_asd.synth.acoustics import Background, MicResponse, domain_acoustics, housing_peaks
from edge_asd.synth.seeding import rng_for
from edge_asd.synth.signal import Clip, mean_square, peaks_gain


@dataclass(frozen=True)
class OperatingPoint:
    """One operating condition of a machine, as its file-name attributes name it."""

    speed_hz: float  # shaft rate (rotating machines) or cycle rate (valve)
    load: float  # machine-specific: load fraction (gearbox), head re nominal (pump), kN (bearing), bar (valve)
    attributes: str  # "key_value_key_value", no '_' inside keys or values


@dataclass(frozen=True)
class Domain:
    name: str  # "source" or "target"
    points: tuple[OperatingPoint, ...]
    mic: MicResponse
    background: Background


def pick(table: tuple, section: int) -> object:
    return table[section % len(table)]


def join_attributes(*pairs: tuple[str, object]) -> str:
    parts = []
    for key, value in pairs:
        text = str(value)
        if "_" in key or "_" in text:
            raise ValueError(f"attribute {key}={text} contains '_'")
        parts += [key, text]
    return "_".join(parts)


@dataclass(frozen=True)
class Anomaly:
    kind: str
    severity: float  # 0 (barely audible) .. 1 (obvious)


def kind_and_severity(anomaly: Anomaly | None) -> tuple[str, float]:
    """The anomaly's kind and severity; ("", 0.0) for a healthy clip."""
    return (anomaly.kind, anomaly.severity) if anomaly else ("", 0.0)


@dataclass(frozen=True)
class Sound:
    """A machine's sound before microphone and background.

    ``healthy_power`` is the power of the part a healthy machine would make,
    against which the background is scaled.
    """

    spectrum: np.ndarray
    healthy_power: float


@dataclass(frozen=True)
class Section:
    machine: str
    index: int
    design: object
    housing: tuple
    source: Domain
    target: Domain

    def domain(self, name: str) -> Domain:
        return self.source if name == "source" else self.target


def finish(clip: Clip, section: Section, healthy: np.ndarray, spectral: np.ndarray | None = None,
           added: np.ndarray | None = None, added_spectral: np.ndarray | None = None) -> Sound:
    """A machine's sound through its housing.

    ``healthy`` (samples) and ``spectral`` (a spectrum, for stationary noise) are
    what the machine makes anyway; ``added`` and ``added_spectral`` are an
    additive anomaly, left out of the power the background is scaled against.
    """
    total = healthy if added is None else healthy + added
    spec = clip.spectrum(total)
    for part in (spectral, added_spectral):
        if part is not None:
            spec = spec + part
    spec = spec * peaks_gain(clip, section.housing)
    p_total = clip.power(spec)
    p_added = (mean_square(added) if added is not None else 0.0) + (
        clip.power(added_spectral) if added_spectral is not None else 0.0
    )
    if p_added == 0.0:
        return Sound(spec, p_total)
    # The anomaly is uncorrelated with the rest and the housing filters both alike,
    # so the healthy share of the output power is the healthy share of the input.
    p_healthy = mean_square(healthy) + (clip.power(spectral) if spectral is not None else 0.0)
    return Sound(spec, p_total * p_healthy / (p_healthy + p_added))


class Machine(ABC):
    """A machine type: how its sections are designed and how one clip of it sounds."""

    name = ""
    anomalies: tuple[str, ...] = ()

    @abstractmethod
    def design(self, index: int, rng: np.random.Generator) -> tuple[object, tuple, tuple]:
        """(design, source operating points, target operating points) of a section."""

    @abstractmethod
    def render(self, clip: Clip, rng: np.random.Generator, section: Section, point: OperatingPoint,
               anomaly: Anomaly | None) -> Sound:
        """One clip of the machine at ``point``, healthy or with ``anomaly``."""

    def section(self, seed: int, index: int) -> Section:
        rng = rng_for(seed, "design", self.name, index)
        design, src_points, tgt_points = self.design(index, rng)
        (src_mic, src_bg), (tgt_mic, tgt_bg) = domain_acoustics(rng)
        return Section(
            machine=self.name,
            index=index,
            design=design,
            housing=housing_peaks(rng),
            source=Domain("source", src_points, src_mic, src_bg),
            target=Domain("target", tgt_points, tgt_mic, tgt_bg),
        )


def rounded_rpm(rpm: float) -> int:
    # Nameplate speeds are quoted to 10 rpm.
    return int(round(rpm / 10.0) * 10)


def rpm_point(rpm: float, key: str, value: object, load: float) -> OperatingPoint:
    """The point at ``rpm`` (a whole number) named ``rpm_<rpm>_<key>_<value>``."""
    return OperatingPoint(int(rpm) / 60.0, load, join_attributes(("rpm", int(rpm)), (key, value)))


def speed_or_load_target(rng: np.random.Generator, rpm: float, speed_factors: list[float], base_load: int,
                         shifted_load: int, load_unit: float) -> tuple[OperatingPoint]:
    """A target domain for half the sections at a speed, for the others at a load, well outside the source's.

    Loads are named in whole ``load_unit``s and given to the machine in units of one.
    """
    if rng.uniform() < 0.5:
        t_rpm = rounded_rpm(rpm * float(rng.choice(speed_factors)))
        return (rpm_point(t_rpm, "load", base_load, base_load / load_unit),)
    return (rpm_point(rpm, "load", shifted_load, shifted_load / load_unit),)
