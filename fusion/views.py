"""A specialist's *view* of an input: which input band feeds each of its bands, or why none can.

Each band the specialist was trained on is taken from the input by name; failing that, a declared
equivalence (:func:`geodata.sensors.equivalent_band`: same SAR polarisation, or the closest centre
wavelength within a tolerance) may stand in. An input band stands in for at most one specialist
band: bands are never repeated to fake a channel count. If any band has no source the specialist
does not apply, and the plan's ``reason`` says which bands are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from geodata.sensors import Band, Catalog, current, equivalent_band, select_bands
from geodata.errors import InputError

__all__ = ["ViewPlan", "plan_view"]


@dataclass(frozen=True)
class ViewPlan:
    """How one specialist reads an input with bands ``input_bands``.

    ``source_bands[i]`` is the input band fed as the specialist's ``i``-th band (empty when not
    applicable); ``substitutions`` lists ``(specialist band, input band)`` stand-ins; ``missing``, the
    specialist's bands no input band serves.
    """

    specialist: str
    input_bands: tuple[str, ...]
    source_bands: tuple[str, ...]
    substitutions: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    missing: tuple[str, ...] = ()

    @property
    def applicable(self) -> bool:
        return bool(self.source_bands)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (``[B, len(input_bands), H, W]``) reordered into the specialist's band order."""
        if not self.applicable:
            raise InputError(f"specialist {self.specialist!r} cannot read bands {self.input_bands}: {self.reason}")
        return select_bands(x, self.input_bands, self.source_bands)

    catalog: Catalog | None = field(default=None, compare=False, repr=False)  # its descriptors (None: current)

    def stand_ins(self) -> str:
        """The stand-ins, each with what makes it one: ``TCI_R <- B04 (664.6 vs 664.6 nm)``."""
        catalog = self.catalog or current()
        return ", ".join(f"{want} <- {have} ({_likeness(catalog.band(want), catalog.band(have))})"
                         for want, have in self.substitutions)

    def describe(self) -> str:
        if not self.applicable:
            return f"{self.specialist}: not applicable: {self.reason}"
        return f"{self.specialist}: applicable" + (f" with {self.stand_ins()}" if self.substitutions else "")


def _likeness(a: Band, b: Band) -> str:
    if a.is_sar:
        return f"{b.polarisation}, {b.frequency_band or 'undeclared'} band"
    return f"{a.wavelength_nm:g} vs {b.wavelength_nm:g} nm"


def plan_view(
    specialist: str,
    wanted: Sequence[str | Band],
    input_bands: Sequence[str | Band],
    tolerance_nm: float,
    catalog: Catalog | None = None,
) -> ViewPlan:
    """Plan how specialist ``specialist`` (trained on ``wanted``) reads an input of ``input_bands``: bands
    are descriptors, or names described by ``catalog`` (default: the current catalog)."""
    given = [b for b in (*wanted, *input_bands) if isinstance(b, Band)]
    catalog = (catalog or current()).with_bands(given) if given else catalog
    wanted = [b.name if isinstance(b, Band) else b for b in wanted]
    have = tuple(b.name if isinstance(b, Band) else b for b in input_bands)
    exact = set(wanted) & set(have)
    free = [b for b in have if b not in exact]  # input bands still available as stand-ins
    sources, subs, missing = [], [], []
    for want in wanted:
        if want in exact:
            sources.append(want)
            continue
        stand_in = equivalent_band(want, free, tolerance_nm, catalog) if free else None
        if stand_in is None:
            missing.append(want)
            continue
        free.remove(stand_in)
        sources.append(stand_in)
        subs.append((want, stand_in))
    if missing:
        reason = (f"no input band for {missing} (input bands {have}; exact names, same polarisation, "
                  f"or wavelength within {tolerance_nm:g} nm, each input band used once)")
        return ViewPlan(specialist, have, (), (), reason, tuple(missing), catalog)
    return ViewPlan(specialist, have, tuple(sources), tuple(subs), catalog=catalog)
