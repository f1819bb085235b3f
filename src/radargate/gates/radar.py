"""RadarGate: fuse each expert with the others, rotate it towards or away from them, then mix.

The project's definition (``docs/radargate.md``; the paper's equations were not available):

1. StretchGate ``g = softmax(x W_g + b_g)`` (or ``softplus``): per-expert magnitudes ``[T, n]``.
2. Fusion ("Map"): ``Phi = masked_softmax(P)`` (``n x n``, zero diagonal, row-stochastic);
   the partner of expert ``i`` is ``c_i = sum_j Phi_ij v_j``.
3. RotationGate angles ``theta = theta_max * tanh(z W_theta + b_theta)`` read the codes of all
   experts; ``W_theta, b_theta`` start at zero, so training starts at the plain weighted sum.
4. Rotate ``v_i`` by ``theta_i`` in the plane of ``v_i`` and ``c_i`` (norm kept);
   positive angles turn ``v_i`` towards its partner.
5. ``delta = sum_i g_i v'_i``.

Other readings of the abstract (``docs/radargate.md``): ``stretch="topk"`` takes the magnitudes from the
top-k gate (sparse), ``stretch="softplus"`` leaves them unnormalised, and ``fusion="input"`` makes the
fusion per token, ``Phi(x) = masked_softmax(P + z W_f)`` (``W_f`` started at zero). Every formula below
holds per token with a ``[T, n, n]`` ``Phi``.

Degenerate planes. With ``q = |v|^2``, ``a = <v, c>``, ``m = |c|^2``, ``kappa = a / (q + tau)``,
the orthogonal part of the partner is ``p = c - kappa v`` with ``pp = |p|^2``. We use

    omega^2 = pp / (pp + delta^2 m + tau)       # ~1 for a proper plane, -> 0 when degenerate
    sigma   = sqrt(omega^2 + eps)
    v'      = cos(theta sigma) v + sin(theta sigma) / sigma * |v|~ / sqrt(pp + delta^2 m + tau) * p

with ``|v|~ = q / sqrt(q + tau)``. For a proper plane this is the exact rotation by
``theta * sigma ~= theta``, and ``|v'| = |v|`` up to a relative ``eps``. As the plane degenerates
(``p`` small against ``delta |c|``, or ``v -> 0``) the effective angle shrinks to zero, so the
rotation becomes the identity smoothly and every gradient stays finite, including at
initialisation where all ``v_i = 0``. ``theta = 0`` gives ``cos = 1, sin = 0``: exactly the
weighted sum.

Two implementations of the same function:

- ``materialized``: builds ``v: [T, n, d_out]`` and follows the steps literally (reference).
- ``span`` (default): everything above depends on the outputs only through the Gram matrix
  ``G = <v_i, v_j>``, and ``sum_i g_i v'_i = sum_j lambda_j v_j`` with
  ``lambda_j = g_j (cos_j - beta_j kappa_j) + sum_i g_i beta_i Phi_ij``
  (``beta_i`` the coefficient of ``p_i`` above). So it computes ``G`` from the codes
  (``experts.gram``), the coefficients ``lambda: [T, n]``, and one ``experts.mix`` matmul: the cost
  of a single LoRA of rank ``n r``, never holding ``[T, n, d_out]``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radargate.experts import LoRAExperts, gram_blocks
from radargate.frozen import FrozenCache
from radargate.gates import radar_decoding
from radargate.gates.base import Gate, GateOutput, make_router, upcast
from radargate.gates.topk import top_k_weights
from radargate.precision import gram_dtype

TAU = 1e-12
"""Absolute floor on squared norms: an expert output with ``|v|^2 << TAU`` counts as zero."""
DELTA = 1e-3
"""Relative threshold: a partner whose part orthogonal to ``v`` is ``<< DELTA |c|`` spans no plane.
Above float32 rounding of ``pp`` (about ``1e-7 m``), so round-off never picks the plane."""
EPS = 1e-12
"""Keeps ``sigma`` away from 0 so its square root has a finite derivative."""


class RadarGate(Gate):
    def __init__(self, *, config, in_features, dtype=None, device=None) -> None:
        super().__init__(config=config, in_features=in_features, dtype=dtype, device=device)
        n = config.num_experts
        self.theta_max = config.theta_max
        self.stretch = config.stretch
        self.top_k, self.renormalize = config.top_k, config.topk_renormalize
        self.impl = config.radar_impl
        self.recompute = config.radar_recompute
        self.router = make_router(in_features, n, dtype, device)
        self.fusion_logits = nn.Parameter(torch.zeros(n, n, dtype=dtype, device=device))
        self.fusion_from_codes = (
            zero_linear(n * config.r, n * n, bias=False, dtype=dtype, device=device)
            if config.fusion == "input"
            else None
        )
        self.angle = zero_linear(n * config.r, n, dtype=dtype, device=device)
        self.frozen = FrozenCache()

    def fusion(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """``Phi``, row-stochastic with a zero diagonal (all zeros for a single expert): ``[n, n]`` for the
        static fusion; ``[T, n, n]`` for the input-dependent one, ``masked_softmax(P + f(z))`` from the
        ``codes`` ``[T, n, r]``."""
        n = self.num_experts
        if n == 1:
            shape = (1, 1) if self.fusion_from_codes is None else (codes.shape[0], 1, 1)
            return upcast(self.fusion_logits.new_zeros(shape))
        logits = self.fusion_logits
        if self.fusion_from_codes is not None:
            logits = logits + self.fusion_from_codes(codes.flatten(1)).view(codes.shape[0], n, n)
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        return upcast(logits).masked_fill(eye, float("-inf")).softmax(dim=-1)

    def stretch_weights(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """StretchGate magnitudes ``g: [T, n]``, and for the top-k stretch which experts each token keeps."""
        if self.stretch == "topk":
            return top_k_weights(logits, self.top_k, renormalize=self.renormalize)
        logits = upcast(logits)
        return (logits.softmax(dim=-1) if self.stretch == "softmax" else F.softplus(logits)), None

    def angles(self, codes: torch.Tensor) -> torch.Tensor:
        """RotationGate angles ``theta: [T, n]`` from the codes of all experts."""
        flat = codes.flatten(1)
        return self.theta_max * torch.tanh(upcast(self.angle(flat)))

    def forward(
        self, tokens: torch.Tensor, codes: torch.Tensor, experts: LoRAExperts, *, with_stats: bool = False
    ) -> GateOutput:
        if self.impl == "span" and not with_stats and _decoding(codes):
            return self._decode(tokens, codes, experts)
        logits = self.router(tokens)
        weights, selected = self.stretch_weights(logits)
        theta = self.angles(codes)
        if self.fusion_from_codes is None:
            phi = self.frozen.get("phi", self.fusion, self.fusion_logits)
        else:
            phi = self.fusion(codes)
        if self.impl == "span":
            # under torch.compile, the compiler's own partitioner decides what to recompute
            recompute = self.recompute and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            delta, gram, geometry = _span_space(codes, experts, weights, phi, theta, recompute)
        else:
            delta, gram, geometry = _materialized(codes, experts, weights, phi, theta)
        extras = _statistics(theta, *geometry) if with_stats else {"theta": theta}
        return GateOutput(
            delta=delta, weights=weights, router_logits=logits, selected=selected, gram=gram, extras=extras
        )

    def _decode(self, tokens: torch.Tensor, codes: torch.Tensor, experts: LoRAExperts) -> GateOutput:
        """The same function for a few tokens without autograd: the angles, coefficients and mix in one compiled
        call (``radar_decoding.py``) on weights kept as arrays while they do not change."""
        dtype = gram_dtype(codes, experts.B)
        arrays = self.frozen.get(
            f"decoding_{dtype}", lambda: self._decoding_arrays(experts, dtype),
            self.angle.weight, self.angle.bias, self.fusion_logits, experts.B,
        )
        logits = self.router(tokens)
        weights, selected = self.stretch_weights(logits)
        phi = arrays.phi if self.fusion_from_codes is None else _array(self.fusion(codes), dtype)
        delta, theta = radar_decoding.kernel()(
            _array(codes, dtype), _array(weights, dtype), phi, arrays.angle, arrays.angle_bias, self.theta_max,
            arrays.blocks, arrays.scaled_b, (TAU, DELTA, EPS),
        )
        return GateOutput(
            delta=torch.from_numpy(delta), weights=weights, router_logits=logits, selected=selected,
            extras={"theta": torch.from_numpy(theta)},
        )

    def _decoding_arrays(self, experts: LoRAExperts, dtype: torch.dtype) -> _DecodingArrays:
        scaled_b = experts.scaled_b(dtype).detach()
        static_phi = _array(self.fusion().detach().unsqueeze(0), dtype) if self.fusion_from_codes is None else None
        return _DecodingArrays(
            angle=_array(self.angle.weight.detach().T.contiguous(), dtype),
            angle_bias=_array(self.angle.bias.detach().clone(), dtype),
            phi=static_phi,
            blocks=_array(gram_blocks(scaled_b, self.num_experts), dtype),
            scaled_b=_array(scaled_b, dtype),
        )


class _DecodingArrays(NamedTuple):
    """What :meth:`RadarGate._decode` reads of the weights, as numpy arrays in the decoding dtype."""

    angle: np.ndarray
    """``[n r, n]``: the RotationGate's weight, transposed."""
    angle_bias: np.ndarray
    phi: np.ndarray | None
    """``[1, n, n]``: the static fusion (``None`` for the input-dependent one)."""
    blocks: np.ndarray
    """``[n, r, n r]``: ``s^2 B B^T`` (``experts.gram_blocks``)."""
    scaled_b: np.ndarray
    """``[n r, d_out]``: ``s B``."""


def _array(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``tensor`` as a numpy array in ``dtype``, without a conversion call where it already is (decoding pays for
    each call)."""
    return (tensor if tensor.dtype == dtype else tensor.to(dtype)).numpy()


def zero_linear(in_features: int, out_features: int, **kwargs) -> nn.Linear:
    """A linear map started at zero: a reading's extra freedom begins switched off, so training starts at the
    plain weighted sum."""
    linear = nn.Linear(in_features, out_features, **kwargs)
    nn.init.zeros_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def _rotation_terms(
    q: torch.Tensor, m: torch.Tensor, pp: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``v' = cos_term * v + beta * p`` (all ``[T, n]``), smooth where the plane degenerates.

    ``beta = sin(theta sigma) / sigma * |v|~ / sqrt(P)`` with ``|v|~ = q / sqrt(q + tau)``, written with one
    reciprocal square root for both.
    """
    plane_norm_sq = torch.add(pp, m, alpha=DELTA**2) + TAU
    sigma = torch.sqrt(pp / plane_norm_sq + EPS)
    turned = theta * sigma
    beta = torch.sin(turned) * q * torch.rsqrt((q + TAU) * plane_norm_sq) / sigma
    return torch.cos(turned), beta


def _span_space(codes, experts, weights, phi, theta, recompute: bool):
    """Coefficients ``lambda`` from the Gram matrix, then one mix matmul (module docstring).

    With ``recompute``, the per-token rotation math (a dozen ``[T, n, n]`` and ``[T, n]``
    intermediates) is not kept for the backward pass but recomputed there from the Gram matrix,
    which is kept (``T n^2`` numbers, no more than the codes at ``n <= r``; recomputing it too
    made the layer 6-9% slower at ``n = 8`` and 16-23% at ``n = 64`` on CPU). The layer then
    saves about what a plain weighted-sum gate saves (1.10x at ``n = 8``). The backward pass is
    written by hand (:class:`SpanCoefficients`): about half the small kernels of autograd's
    recomputation plus its backward.
    """
    gram = experts.gram(codes)
    if recompute:
        coefficients, *geometry = SpanCoefficients.apply(gram, weights, phi, theta)
    else:
        coefficients, *geometry = _span_coefficients(gram, weights, phi, theta)
    delta = experts.mix(codes, coefficients.to(codes.dtype))
    return delta, gram, tuple(geometry)


DECODE_TOKENS = 64
"""At most this many tokens take the decoding path (:meth:`RadarGate._decode`); past it torch's batched ops win."""


def _decoding(codes: torch.Tensor) -> bool:
    """Whether a call is decoding-sized: a few float32/64 tokens on the CPU, without autograd or autocast and
    outside ``torch.compile``, with numba installed (``radar_decoding.py``)."""
    return (
        codes.shape[0] <= DECODE_TOKENS
        and codes.device.type == "cpu"
        and codes.dtype in (torch.float32, torch.float64)
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and radar_decoding.kernel() is not None
    )


def _span_coefficients(gram, weights, phi, theta):
    """``lambda: [T, n]`` with ``sum_i g_i v'_i = sum_j lambda_j v_j``, and the per-expert geometry."""
    q, a, _, m, kappa, raw_pp = _plane_geometry(gram, phi)
    pp = raw_pp.clamp_min(0.0)
    cos_term, beta = _rotation_terms(q, m, pp, theta)
    kept = torch.addcmul(cos_term, beta, kappa, value=-1)
    coefficients = torch.addcmul(_through(weights * beta, phi), weights, kept)
    return coefficients, q, a, m, kappa, cos_term, beta


class SpanCoefficients(torch.autograd.Function):
    """``_span_coefficients`` with the Gram matrix, weights, fusion and angles saved, and a hand-written
    backward that recomputes the ``[T, n]`` geometry once and runs the chain rule in batched ops.

    The chain, with ``'`` marking a gradient (``gb = g beta``, ``P = pp + delta^2 m + tau``,
    ``nv = q / sqrt(q + tau)``, ``t = theta sigma``): ``gb' = lambda' Phi^T``, ``g' = lambda' (cos -
    beta kappa) + gb' beta``, ``beta' = g (gb' - lambda' kappa)``, ``t' = -sin g lambda' + cos nv beta' /
    (sigma sqrt P)``, then through ``sigma = sqrt(pp / P + eps)``, ``pp = max(m - 2 kappa a + kappa^2 q,
    0)``, ``kappa = a / (q + tau)`` to ``q, a, m`` and from them to ``G`` and ``Phi`` (``G`` is symmetric,
    so ``dm_i / dPhi_ij = 2 (G Phi^T)_ji``). Checked against autograd in float64 (``tests/test_radar.py``).
    """

    @staticmethod
    def forward(ctx, gram, weights, phi, theta):
        outputs = _span_coefficients(gram, weights, phi, theta)
        ctx.save_for_backward(gram, weights, phi, theta)
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_coefficients, *_):
        gram, weights, phi, theta = ctx.saved_tensors
        q, a, gram_phi, m, kappa, raw_pp = _plane_geometry(gram, phi)
        q_tau = q + TAU
        pp = raw_pp.clamp_min(0.0)
        plane = pp + DELTA**2 * m + TAU
        ratio = pp / plane
        sigma = torch.sqrt(ratio + EPS)
        turned = theta * sigma
        sin, cos = torch.sin(turned), torch.cos(turned)
        inv_q = torch.rsqrt(q_tau)
        norm_v = q * inv_q
        unit = torch.rsqrt(plane) / sigma
        scale = norm_v * unit  # beta = sin * scale
        beta = sin * scale

        grad = grad_coefficients
        phi_t = phi.transpose(-1, -2)
        grad_gb = _through(grad, phi_t)
        per_token = phi.dim() > 2
        if per_token:
            grad_phi = (weights * beta).unsqueeze(-1) * grad.unsqueeze(-2)
        else:
            grad_phi = (weights * beta).flatten(0, -2).T @ grad.flatten(0, -2)
        grad_weights = grad * (cos - beta * kappa) + grad_gb * beta
        grad_beta = weights * (grad_gb - grad * kappa)
        grad_kappa = -grad * weights * beta
        grad_turned = -sin * weights * grad + cos * scale * grad_beta
        grad_theta = sigma * grad_turned
        grad_sigma = theta * grad_turned - beta / sigma * grad_beta
        grad_norm_v = sin * unit * grad_beta
        grad_ratio = grad_sigma / (2 * sigma)
        grad_plane = -0.5 * beta / plane * grad_beta - grad_ratio * ratio / plane
        grad_pp = grad_ratio / plane + grad_plane
        grad_m = DELTA**2 * grad_plane
        grad_raw = grad_pp * (raw_pp >= 0)
        grad_m = grad_m + grad_raw
        grad_kappa = grad_kappa + grad_raw * 2 * (kappa * q - a)
        grad_a = -2 * kappa * grad_raw + grad_kappa / q_tau
        grad_q = kappa**2 * grad_raw - grad_kappa * kappa / q_tau + grad_norm_v * inv_q * (1 - 0.5 * q / q_tau)

        # [T, n, n] work: a contiguous left factor, so that the matmul folds T into its rows, and sums over
        # T before any transpose (the strided forms copy T n^2 numbers each: 769 vs 636 ms for this
        # function's forward + backward at n = 64, 2048 tokens, one thread)
        grad_gram_phi = phi_t * grad_m.unsqueeze(-2)  # [T, j, i] = dm_i Phi_ij
        grad_gram = grad_gram_phi @ phi + grad_a.unsqueeze(-1) * phi
        grad_gram.diagonal(dim1=-2, dim2=-1).add_(grad_q)

        def over_tokens(tensor):  # a shared Phi sums its gradient over the tokens; a per-token one keeps it
            return tensor if per_token else tensor.flatten(0, -3).sum(0)

        grad_phi = grad_phi + over_tokens(grad_a.unsqueeze(-1) * gram)
        grad_phi = grad_phi + 2 * over_tokens(gram_phi * grad_m.unsqueeze(-2)).transpose(-1, -2)
        return grad_gram, grad_weights, grad_phi, grad_theta


def _through(rows: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``rows @ Phi`` per token: ``rows`` ``[T, n]``, ``Phi`` shared ``[n, n]`` or per token ``[T, n, n]``."""
    return rows @ phi if phi.dim() == 2 else (rows.unsqueeze(-2) @ phi).squeeze(-2)


def _plane_geometry(gram, phi):
    """Per expert, from the Gram matrix: ``q = |v|^2``, ``a = <v, c>``, ``G Phi^T`` (``[T, j, i] = <v_j, c_i>``),
    ``m = |c|^2``, ``kappa = a / (q + tau)`` and ``|p|^2`` before clamping at 0 (rounding can make it negative)."""
    q = torch.diagonal(gram, dim1=-2, dim2=-1)
    phi_t = phi.transpose(-1, -2)
    gram_phi = gram @ phi_t
    a = torch.diagonal(gram_phi, dim1=-2, dim2=-1)  # <v_i, c_i>
    m = (gram_phi * phi_t).sum(-2)  # |c_i|^2 = sum_j Phi_ij <v_j, c_i>, without a strided transpose
    kappa = a / (q + TAU)
    return q, a, gram_phi, m, kappa, torch.addcmul(m, kappa, torch.add(kappa * q, a, alpha=-2))


def _materialized(codes, experts, weights, phi, theta):
    """The literal definition on ``[T, n, d_out]`` expert outputs: the readable reference."""
    outputs = upcast(experts.outputs(codes))
    rotated, geometry = rotate_outputs(outputs, phi, theta)
    delta = (weights.unsqueeze(-1) * rotated).sum(1).to(codes.dtype)
    gram = outputs @ outputs.transpose(-1, -2)
    return delta, gram, geometry


def rotate_outputs(outputs: torch.Tensor, phi: torch.Tensor, theta: torch.Tensor
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Steps 2 and 4 on materialised outputs ``[T, n, d_out]`` (``Phi`` shared ``[n, n]`` or ``[T, n, n]``):
    returns the rotated outputs and the per-expert geometry ``(q, a, m, kappa, cos_term, beta)``, each ``[T, n]``."""
    partners = phi @ outputs  # [n, n] or [T, n, n] times [T, n, d_out]
    q = (outputs * outputs).sum(-1)
    a = (outputs * partners).sum(-1)
    m = (partners * partners).sum(-1)
    kappa = a / (q + TAU)
    orthogonal = partners - kappa.unsqueeze(-1) * outputs
    pp = (orthogonal * orthogonal).sum(-1)
    cos_term, beta = _rotation_terms(q, m, pp, theta)
    rotated = cos_term.unsqueeze(-1) * outputs + beta.unsqueeze(-1) * orthogonal
    return rotated, (q, a, m, kappa, cos_term, beta)


@torch.no_grad()
def _statistics(theta, q, a, m, kappa, cos_term, beta) -> dict[str, torch.Tensor]:
    """Angles and the cosine between each expert and its partner before and after rotation.

    ``<v', c> = cos_term a + beta (m - kappa a)`` and ``|v'| = |v|``, so no output is needed.
    """
    norms = torch.sqrt(q * m).clamp_min(TAU)
    after = cos_term * a + beta * (m - kappa * a)
    return {"theta": theta, "cos_before": a / norms, "cos_after": after / norms}
