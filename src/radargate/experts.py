"""Stacked LoRA experts: all ``n`` experts of a layer computed as one low-rank product.

Expert ``i`` maps a token ``x`` (``d_in``) to its code ``z_i = x A_i^T`` (``r``) and its output
``v_i = s * z_i B_i`` (``d_out``), with ``s = alpha / r``. The factors are stored stacked,
``A: [n, r, d_in]`` (each slice is PEFT's ``lora_A.weight``) and ``B: [n, r, d_out]``, so that
``A.view(n * r, d_in)`` and ``B.view(n * r, d_out)`` are free views: the codes of every expert
are one matmul, and any mixture ``sum_i lambda_i v_i`` is a second one, exactly the cost of a
single LoRA of rank ``n * r``. Nothing here loops over experts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from radargate.frozen import FrozenCache
from radargate.precision import gram_dtype


class LoRAExperts(nn.Module):
    """``num_experts`` LoRA factor pairs; ``B`` starts at zero so the layer starts as the base."""

    def __init__(
        self,
        *,
        num_experts: int,
        in_features: int,
        out_features: int,
        r: int,
        scaling: float,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.r = r
        self.scaling = scaling
        self.A = nn.Parameter(torch.empty(num_experts, r, in_features, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(num_experts, r, out_features, dtype=dtype, device=device))
        self.frozen = FrozenCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PEFT's LoRA initialisation: Kaiming-uniform ``A`` per expert, zero ``B``."""
        bound = 1.0 / math.sqrt(self.A.shape[-1])  # kaiming_uniform_(a=sqrt(5)) on [r, d_in]
        with torch.no_grad():
            self.A.uniform_(-bound, bound)
            self.B.zero_()

    @property
    def A_flat(self) -> torch.Tensor:
        """``[n * r, d_in]``: every expert's down-projection, one after another."""
        return self.A.reshape(-1, self.A.shape[-1])

    @property
    def B_flat(self) -> torch.Tensor:
        """``[n * r, d_out]``: every expert's up-projection, one after another."""
        return self.B.reshape(-1, self.B.shape[-1])

    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[tokens, d_in] -> [tokens, n, r]``: the low-rank code of each expert."""
        return (tokens @ self.A_flat.T).view(tokens.shape[0], self.num_experts, self.r)

    def mix(self, codes: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """``sum_i coefficients_i * v_i`` as one ``[tokens, n r] x [n r, d_out]`` matmul.

        ``codes``: ``[tokens, n, r]``; ``coefficients``: ``[tokens, n]``; returns ``[tokens, d_out]``. The
        scale ``s`` goes on the ``[tokens, n]`` coefficients, not on the ``[tokens, d_out]`` result (one
        pass less over the widest tensor, forward and backward; PEFT's LoRA makes that pass).
        """
        scaled = (coefficients * self.scaling).unsqueeze(-1)
        return (codes * scaled).flatten(1) @ self.B_flat

    def outputs(self, codes: torch.Tensor) -> torch.Tensor:
        """``[tokens, n, r] -> [tokens, n, d_out]``: every expert's output, materialised."""
        return torch.einsum("tnr,nrd->tnd", codes, self.B) * self.scaling

    def gram(self, codes: torch.Tensor) -> torch.Tensor:
        """``[tokens, n, n]``: ``G_ij = <v_i, v_j>`` per token, without materialising the outputs.

        ``G_ij = s^2 z_i (B_i B_j^T) z_j^T`` (see :class:`BlockGram`); each token costs
        ``(n r)^2``, independent of ``d_out``. Computed in float32 (or float64), also under autocast.
        Without autograd (evaluation, generation) the ``B B^T`` blocks are computed once per weight update.
        """
        dtype = gram_dtype(codes, self.B)
        if torch.is_autocast_enabled(codes.device.type):  # gate math in at least float32
            with torch.autocast(codes.device.type, enabled=False):
                return self.gram(codes)
        if not torch.is_grad_enabled():
            return gram_from_blocks(codes.to(dtype), self.frozen_blocks(dtype))
        return BlockGram.apply(codes.to(dtype), self.scaled_b(dtype))

    def frozen_blocks(self, dtype: torch.dtype) -> torch.Tensor:
        """``gram_blocks`` of the current ``B``, computed once per change of ``B`` (no autograd)."""
        return self.frozen.get(f"blocks_{dtype}", lambda: gram_blocks(self.scaled_b(dtype), self.num_experts), self.B)

    def scaled_b(self, dtype: torch.dtype) -> torch.Tensor:
        """``s B_flat`` in ``dtype``: the scale on ``B`` (``n r x d_out``), not on ``G`` (``T x n x n``),
        is one pass less over ``[T, n, n]`` each way."""
        return self.B_flat.to(dtype) * self.scaling


GRAM_CHUNK_ELEMENTS = 1 << 21
"""Size of the Gram's largest intermediate per token chunk (8 MB in float32). On a CPU a fresh
``[n, T, n r]`` tensor (256 MB at ``n = 64``, ``T = 2048``) costs more in page faults and memory
traffic than its arithmetic; chunks this small stay in cache and reuse freed memory (forward and
backward measured 2.6x faster at ``n = 64``). Below ``n = 32`` (``r = 8``, ``T = 2048``) it is one chunk."""


def token_chunks(tokens: int, per_token: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``GRAM_CHUNK_ELEMENTS // per_token`` tokens (at least one); one empty
    range for no tokens (a batch of empty contexts)."""
    size = max(1, GRAM_CHUNK_ELEMENTS // per_token)
    return [(start, min(start + size, tokens)) for start in range(0, max(tokens, 1), size)]


class BlockGram(torch.autograd.Function):
    """``G[t, i, j] = z_ti (B_i B_j^T) z_tj^T`` for codes ``z: [T, n, r]`` and ``B_flat: [n r, d]``.

    Forward: the ``r x r`` blocks ``K = B B^T`` once, one batched matmul per expert row
    (``P[i, t, j] = z_ti K_ij``, ``[n, T, n r]``), then a multiply-sum over ``r``. Autograd would keep
    ``P`` (the largest tensor here) and make about eight passes over it; this backward keeps nothing
    but its inputs and makes one: with ``S = dG + dG^T`` and ``X[i, t, j] = S_tij z_tj``,
    ``dz_ti = X_i K_i^T`` and ``dK + dK^T = sum_t z_ti^T X_ti``, both matmuls with long inner
    dimensions, and ``dB = (dK + dK^T) B``. Both passes walk the tokens in chunks
    (:data:`GRAM_CHUNK_ELEMENTS`).
    """

    @staticmethod
    def forward(ctx, codes: torch.Tensor, b_flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(codes, b_flat)
        return gram_from_blocks(codes, gram_blocks(b_flat, codes.shape[1]))

    @staticmethod
    def backward(ctx, grad_gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, b_flat = ctx.saved_tensors
        tokens, n, r = codes.shape
        blocks = gram_blocks(b_flat, n)  # [i, a, (j b)]
        symmetric = (grad_gram + grad_gram.transpose(-1, -2)).transpose(0, 1)  # [i, t, j]
        grad_codes = []
        grad_blocks = codes.new_zeros(n, r, n * r)  # dK + dK^T, by row blocks
        for start, stop in token_chunks(tokens, n * n * r):
            weighted = (symmetric[:, start:stop].unsqueeze(-1) * codes[start:stop]).view(n, stop - start, n * r)
            grad_codes.append(torch.bmm(weighted, blocks.transpose(1, 2)).transpose(0, 1))
            grad_blocks = grad_blocks + torch.bmm(codes[start:stop].permute(1, 2, 0), weighted)
        return torch.cat(grad_codes), grad_blocks.view(n * r, n * r) @ b_flat


def gram_blocks(b_flat: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``K = B B^T`` as ``[n, r, n r]`` row blocks: ``K[i, a, (j b)] = <B_ia, B_jb>``."""
    rank_total = b_flat.shape[0]
    return (b_flat @ b_flat.T).view(num_experts, rank_total // num_experts, rank_total)


def gram_from_blocks(codes: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``G[t, i, j] = z_ti K_ij z_tj^T``: one batched matmul per expert row (``[n, T, n r]``), then a
    multiply-sum over ``r``, token chunk by token chunk; contiguous ``[T, n, n]`` (the gate's
    matmuls need no copy)."""
    tokens, n, r = codes.shape
    chunks = token_chunks(tokens, n * n * r)
    if len(chunks) == 1:  # no slicing: generation calls this with a few tokens, once per layer and token
        return _gram_chunk(codes, blocks).contiguous()
    return torch.cat([_gram_chunk(codes[start:stop], blocks) for start, stop in chunks])


def _gram_chunk(codes: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``[T, n, n]`` (a transposed view) for one chunk of codes ``[T, n, r]``."""
    tokens, n, r = codes.shape
    projected = torch.bmm(codes.transpose(0, 1), blocks).view(n, tokens, n, r)  # [i, t, j, b]
    return torch.linalg.vecdot(projected, codes).transpose(0, 1)
