"""Physical half-lives of the tracers in use (shared by the simulator and the leakage service).

Values: NNDC / DDEP recommended data (Laboratoire National Henri Becquerel,
"Table de Radionucleides"): Tc-99m 6.0067 h, I-131 8.0252 d, In-111 2.8047 d.
"""

from __future__ import annotations

import math

HALF_LIFE_S: dict[str, float] = {
    "Tc-99m": 6.0067 * 3600.0,
    "I-131": 8.0252 * 86400.0,
    "In-111": 2.8047 * 86400.0,
}


def decay_constant_per_s(isotope: str) -> float:
    """``lambda = ln 2 / half-life``, in 1/s. Raises ``ValueError`` for an unknown isotope."""
    try:
        return math.log(2.0) / HALF_LIFE_S[isotope]
    except KeyError:
        raise ValueError(f"unknown isotope {isotope!r}; known: {', '.join(HALF_LIFE_S)}") from None
