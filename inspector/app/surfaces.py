"""What the memory bank is told about the part's surface.

No one setting suits every part (README, "The default detector"): on validation splits cut from
``train/``, balancing the backbone's stages and leaving the map unsmoothed suits a fine repeating
texture with thin defects (brickwork 0.958 -> 0.984) and hurts castings and tiles (casting 0.939 ->
0.914).  The texture surface also leaves the descriptors unwhitened, since whitening would undo the
balancing.  A surface is an operator-facing name for such a set of settings.

``auto`` lets the labelled defects decide: the bank is fitted once per surface and the one that
best separates the held-out calibration goods from the labelled defects (image AUROC) is kept.  The
memory bank never learns from those defects, so they are free to choose with.  Without labelled
defects there is nothing to choose with, and ``auto`` is ``parts``.  (Choosing on pseudo-anomalies
painted on held-out goods instead was tried and picked wrongly on magnetic tile.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Surface:
    name: str
    description: str
    hparams: dict
    smoothing: float | None          # None: the method's own


SURFACES = {
    "parts": Surface("parts", "parts and shapes: castings, tiles, components", {}, None),
    "texture": Surface("texture", "a fine repeating texture with thin defects: brick, fabric, wood grain",
                       {"balance_stages": True, "whiten": False}, 0.0),
}
#: Fit each surface and keep the one the labelled defects prefer (``parts`` without any).
AUTO = "auto"
AUTO_DESCRIPTION = "choose with the labelled defects (parts when there are none)"
#: The surface when none is asked for.
DEFAULT = "parts"
#: The methods a surface setting applies to.
SURFACE_METHODS = ("patchcore",)
#: Fewer labelled defects than this cannot choose between surfaces.
MIN_DEFECTS_TO_CHOOSE = 2


def surface_names() -> tuple[str, ...]:
    return (*SURFACES, AUTO)


def applies_to(method: str) -> bool:
    """Whether a surface setting means anything to ``method`` (a name, or ``default``)."""
    import models

    try:
        return models.get_method(method).method in SURFACE_METHODS
    except models.UnknownMethodError:
        return False


def check_surface(surface: str, method: str) -> str | None:
    """Why ``surface`` cannot be used with ``method``, or None."""
    if surface not in surface_names():
        return f"unknown surface {surface!r}: {', '.join(surface_names())}"
    if surface != DEFAULT and not applies_to(method):
        return f"the surface setting is for the memory bank ({', '.join(SURFACE_METHODS)}), not {method!r}"
    return None


def fits_for(surface: str, n_defects: int) -> int:
    """How many times the bank is fitted for ``surface`` (auto fits each surface when it can choose)."""
    return len(SURFACES) if surface == AUTO and n_defects >= MIN_DEFECTS_TO_CHOOSE else 1


def describe_choice(training: dict) -> str | None:
    """The surface a model was trained with, and why (and whether it learned mirror images), in a
    sentence for the operator (None: no surface)."""
    surface, choice = training.get("surface"), training.get("surface_choice")
    if surface is None:
        return None
    mirrored = " It learned the good samples' mirror images too." if training.get("flips") else ""
    if choice is None:
        return f"Surface: {surface}.{mirrored}"
    if "auroc" not in choice:
        return f"Surface: {surface} ({choice['reason']}).{mirrored}"
    others = ", ".join(f"{name} {value:.3f}" for name, value in choice["auroc"].items() if name != surface)
    return (f"Surface: {surface}, chosen with {choice['n_defects']} labelled defects (AUROC "
            f"{choice['auroc'][surface]:.3f}; {others}).{mirrored}")
