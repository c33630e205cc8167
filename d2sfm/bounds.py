"""The one range check of every number a user gives, on the command line (``commands.options.number``) or in a
config dataclass (``d2sfm.config``), so that both refuse the same values with the same words."""

from __future__ import annotations

import math


def out_of_range(value: float, at_least: float | None = None, above: float | None = None,
                 at_most: float | None = None) -> str | None:
    """None when ``value`` is finite and within the bounds, else what a valid value is ("a number >= 1")."""
    if (math.isfinite(value) and (at_least is None or value >= at_least) and (above is None or value > above)
            and (at_most is None or value <= at_most)):
        return None
    bounds = [f">= {at_least:g}" if at_least is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {at_most:g}" if at_most is not None else ""]
    return "a number " + " and ".join(filter(None, bounds)) if any(bounds) else "a finite number"
