"""Fit the erfc approximation behind eet's fast exact-GELU for 16-bit tensors (csrc/gelu_erf_fast.cuh).

    erfc(z) ~= t * 2^(Q(t) - z^2 * log2(e)),   t = 1 / (1 + z / 2),   z >= 0

Q is a degree-8 polynomial in t, fitted here by iteratively reweighted least squares (a near-minimax fit) to
log2(erfc(z) / t) + z^2 log2(e) over z in [0, 10] (t in [1/6, 1]; past z = 10 erfc < 3e-45 is zero in fp32 anyway).
The form keeps the relative error of erfc small over the whole tail, so gelu(h) = h * erfc(-h / sqrt(2)) / 2 for
negative h has no cancellation (torch's 0.5 * h * (1 + erf(h / sqrt(2))) has, in fp32). Usage:

    python scripts/fit_gelu_erfc.py      # prints the coefficients (highest power first) and the errors

It reports the fit's error in float64 and the error of a float32 Horner evaluation with exact exp2 / reciprocal,
both as the relative error of erfc. The float32 error grows with z (the z^2 log2(e) term rounds at ~100): 3.8e-6
on [0, 4.5], 1.6e-5 on [0, 9], far under the 2^-9 / 2^-12 rounding of bf16 / fp16, the only dtypes that use it.
"""

from __future__ import annotations

import math

import numpy as np

DEGREE = 8
LOG2E = 1.0 / math.log(2.0)


def _target(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = 1.0 / (1.0 + 0.5 * z)
    q = np.array([math.log2(math.erfc(v)) for v in z]) + z * z * LOG2E - np.log2(t)
    return t, q


def fit(degree: int = DEGREE) -> np.ndarray:
    """Coefficients of Q, lowest power first."""
    z = np.linspace(0.0, 10.0, 40001)
    t, q = _target(z)
    weights = np.ones_like(t)
    for _ in range(40):
        coef = np.polynomial.polynomial.polyfit(t, q, degree, w=weights)
        err = np.abs(np.polynomial.polynomial.polyval(t, coef) - q)
        weights *= 1.0 + 5.0 * err / err.max()
    return coef


def erfc_float32(z: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """The kernel's evaluation order in float32 (exact exp2 and reciprocal)."""
    z = z.astype(np.float32)
    t = (np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * z)).astype(np.float32)
    acc = np.full_like(t, np.float32(coef[-1]))
    for c in coef[-2::-1]:
        acc = (acc * t + np.float32(c)).astype(np.float32)
    arg = (acc - (z * np.float32(LOG2E)).astype(np.float32) * z).astype(np.float32)
    return (t * np.exp2(arg)).astype(np.float32)


def main() -> None:
    coef = fit()
    print("Q coefficients, highest power first:")
    for c in coef[::-1]:
        print(f"  {float(np.float32(c)):.9g}f,")
    for top in (4.5, 9.0):  # fp16's gelu underflows below h = -6.4 (z = 4.5); bf16 / fp32 reach further
        z = np.linspace(0.0, top, 90001)
        t, q = _target(z)
        fit_err = np.abs(np.exp2(np.polynomial.polynomial.polyval(t, coef) - q) - 1.0).max()
        exact = np.array([math.erfc(v) for v in z])
        f32_err = np.abs(erfc_float32(z, coef) / exact - 1.0).max()
        print(f"max relative error of erfc on [0, {top}]: fit {fit_err:.3g}, float32 evaluation {f32_err:.3g}")


if __name__ == "__main__":
    main()
