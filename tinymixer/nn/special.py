"""The error function, vectorised for NumPy and CuPy arrays (NumPy has no ``erf`` of its own).

Used by the exact GELU, ``x * Phi(x)`` with ``Phi(x) = (1 + erf(x / sqrt(2))) / 2``. It must be accurate to
float64 round-off, not just to float32: the finite-difference gradient check of the exact GELU compares its
backward, which uses the true derivative ``2/sqrt(pi) * exp(-x^2)``, against differences of *this* function, so
any approximation error would show up as a gradient error.

Method: for ``z = |x|`` write ``erfc(z) = t * exp(-z^2 + P(s))`` with ``t = 2 / (2 + z)`` and ``s = 2t - 1`` in
(-1, 1]. The correction ``P`` is smooth and slowly varying on the whole half-line, so a degree-24 polynomial
(fitted for this project by least squares on Chebyshev nodes against a float64 reference ``erfcx``) gives
``|erf(x) - erf_true(x)| < 3e-15`` for all x. Then ``erf(x) = sign(x) * (1 - erfc(|x|))``.
"""

from __future__ import annotations

from typing import Any

from ..backend import array_module

# Coefficients of P(s), lowest power first.
_ERFC_POLY = (
    -6.71794084056692165e-01,
    6.72643223977658744e-01,
    4.73433068418693953e-02,
    -4.68956102314005627e-02,
    -9.87268936480841137e-03,
    8.82493856346851409e-03,
    1.75893352397423082e-03,
    -2.34581257908681546e-03,
    -1.46246480312485255e-04,
    6.73679297981667497e-04,
    -9.37376586439209793e-05,
    -1.74304728042100446e-04,
    7.14127972444870209e-05,
    3.17483279737020450e-05,
    -3.02238155172026590e-05,
    1.37769924859770878e-07,
    8.63831436479960414e-06,
    -2.96135407362085131e-06,
    -1.38226425458505774e-06,
    1.28203219929756583e-06,
    -6.05674092880159285e-08,
    -2.89055273318199389e-07,
    8.50876551189828305e-08,
    2.97209920284082436e-08,
    -1.40997938496269483e-08
,
)


def erf(x: Any) -> Any:
    """Error function of every element of ``x`` (float32 or float64, NumPy or CuPy); same dtype as ``x``."""
    xp = array_module(x)
    z = xp.abs(x)
    t = 2.0 / (2.0 + z)
    s = 2.0 * t - 1.0
    poly = xp.full_like(s, _ERFC_POLY[-1])
    for c in reversed(_ERFC_POLY[:-1]):  # Horner's rule
        poly *= s
        poly += c
    erfc = t * xp.exp(poly - z * z)
    return xp.sign(x) * (1.0 - erfc)
