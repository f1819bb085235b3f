"""RadarGate while decoding: the whole per-token gate math of a few tokens in one compiled call.

Generation calls every adapted layer once per new token with a handful of tokens, where each small torch op
costs its dispatch (1-4 us) whatever its size. The softmax gate is five such ops; RadarGate's angles, plane
geometry and coefficients are some forty (one layer, one token: 113 us against the softmax layer's 60 us;
the same ops in numpy still took 95 us). Here the angles, coefficients and the final mix are one loop nest
compiled by numba (the ``serve`` extra), compiled on first use and cached on disk: 75 us. The router stays in
torch, whose matmul code the base layers keep hot; numpy's matmuls were slower there, called cold between layers.

It computes exactly the span path's function (``radar.py``): the Gram entries ``<v_i, v_j> = z_i K_ij z_j^T``
from the cached ``K = s^2 B B^T`` blocks, then ``q, a, m, kappa, |p|^2``, the smooth rotation terms and
``lambda_j = g_j (cos_j - beta_j kappa_j) + sum_i g_i beta_i Phi_ij``, term by term as
``_span_coefficients`` writes them (tested against the float64 materialised reference and the torch path).
Without numba, decoding takes the torch path.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable

import numpy as np


@functools.cache
def kernel() -> Callable | None:
    """The compiled :func:`mixture_and_angles`, or ``None`` where numba is not installed."""
    if importlib.util.find_spec("numba") is None:
        return None
    import numba

    return numba.njit(cache=True)(mixture_and_angles)


def mixture_and_angles(codes, weights, phi, angle_weight, angle_bias, theta_max, blocks, scaled_b, smoothing):
    """``(delta, theta)``: the gate's output ``[T, d_out]`` and angles ``[T, n]`` for codes ``[T, n, r]``,
    StretchGate weights ``[T, n]``, fusion ``[1, n, n]`` (shared) or ``[T, n, n]``, the RotationGate's linear map
    (transposed, ``[n r, n]``, and ``[n]``), the Gram blocks ``[n, r, n r]`` (``K`` with the scale), ``s B``
    ``[n r, d_out]`` and ``radar.py``'s smoothing constants ``(TAU, DELTA, EPS)``. Plain loops for numba; sums in
    float64."""
    tau, delta_sq, eps = smoothing[0], smoothing[1] ** 2, smoothing[2]
    tokens, n, r = codes.shape
    delta = np.zeros((tokens, scaled_b.shape[1]), dtype=codes.dtype)
    coefficients = np.empty(n, dtype=codes.dtype)  # the mix below then runs in the codes' precision, vectorized
    theta = np.empty((tokens, n), dtype=codes.dtype)
    gram = np.empty((n, n))
    gram_phi = np.empty((n, n))  # [j, i] = <v_j, c_i>
    turned_weight = np.empty(n)  # g_i beta_i
    for t in range(tokens):
        z = codes[t]
        fusion = phi[t if phi.shape[0] > 1 else 0]
        for i in range(n):
            logit = float(angle_bias[i])
            for j in range(n):
                for b in range(r):
                    logit += angle_weight[j * r + b, i] * z[j, b]
            theta[t, i] = theta_max * math.tanh(logit)
            for j in range(i, n):
                total = 0.0
                for a in range(r):
                    inner = 0.0
                    for b in range(r):
                        inner += blocks[i, a, j * r + b] * z[j, b]
                    total += z[i, a] * inner
                gram[i, j] = total
                gram[j, i] = total
        for j in range(n):
            for i in range(n):
                total = 0.0
                for k in range(n):
                    total += gram[j, k] * fusion[i, k]
                gram_phi[j, i] = total
        for i in range(n):
            q, a_i = gram[i, i], gram_phi[i, i]  # |v_i|^2, <v_i, c_i>
            m = 0.0
            for j in range(n):
                m += fusion[i, j] * gram_phi[j, i]
            kappa = a_i / (q + tau)
            pp = max(m + kappa * (kappa * q - 2 * a_i), 0.0)
            plane = pp + delta_sq * m + tau
            sigma = math.sqrt(pp / plane + eps)
            turned = theta[t, i] * sigma
            beta = math.sin(turned) * q * ((q + tau) * plane) ** -0.5 / sigma
            turned_weight[i] = weights[t, i] * beta
            coefficients[i] = weights[t, i] * (math.cos(turned) - beta * kappa)
        for j in range(n):
            total = 0.0
            for i in range(n):
                total += turned_weight[i] * fusion[i, j]
            coefficients[j] += total
        for i in range(n):
            for a in range(r):
                scale = coefficients[i] * z[i, a]
                for d in range(scaled_b.shape[1]):
                    delta[t, d] += scale * scaled_b[i * r + a, d]
    return delta, theta
