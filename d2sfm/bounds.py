"""The one range check of every number a user gives, on the command line (``commands.options.number``) or in a
config dataclass (``d2sfm.config``, ``training.settings.TrainingConfig``), so that both refuse the same values with
the same words."""

from __future__ import annotations

import math
import numbers

from d2sfm.errors import D2sfmError


def out_of_range(value: float, at_least: float | None = None, above: float | None = None,
                 at_most: float | None = None) -> str | None:
    """None when ``value`` is finite and within the bounds, else what a valid value is ("a number >= 1")."""
    if (math.isfinite(value) and (at_least is None or value >= at_least) and (above is None or value > above)
            and (at_most is None or value <= at_most)):
        return None
    bounds = [f">= {at_least:g}" if at_least is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {at_most:g}" if at_most is not None else ""]
    return "a number " + " and ".join(filter(None, bounds)) if any(bounds) else "a finite number"


def check_numbers(config: object, **bounds: dict) -> None:
    """Each named field of ``config`` within its bounds (d2sfm.bounds, as the command line checks them; None
    passes where it is the field's "off"): a Python user's bad value is the command line's one-line refusal, before
    any work, not a traceback or a silent empty result later."""
    for name, limits in bounds.items():
        value = getattr(config, name)
        limits = dict(limits)
        if limits.pop("optional", False) and value is None:
            continue
        if not isinstance(value, numbers.Real) or isinstance(value, bool):  # numpy's numbers are numbers too
            raise D2sfmError(f"{type(config).__name__}.{name} = {value!r} is not a number")
        wanted = out_of_range(value, **limits)
        if wanted:
            raise D2sfmError(f"{type(config).__name__}.{name} = {value!r} is out of range: give {wanted}")


def check_choice(config: object, name: str, choices: tuple, optional: bool = False) -> None:
    value = getattr(config, name)
    if not (value in choices or (optional and value is None)):
        raise D2sfmError(f"{type(config).__name__}.{name} = {value!r}: use one of {', '.join(map(str, choices))}")
