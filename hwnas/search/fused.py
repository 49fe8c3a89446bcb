"""The search step's gate arithmetic in few, large operations (what a launch-bound GPU pays
for): the differentiable costs as one quadratic form, the keep mask from a dense set matrix.

Costs. With ``a = const + D @ alive`` the alive input (first half) and output (second half)
channels of every layer, a bilinear cost ``c0 + c_in . a_in + c_out . a_out + c_bil .
(a_in * a_out)`` is a quadratic form in the per-gate alive values::

    cost_m(alive) = k_m + l_m . alive + alive . (Q_m @ alive)

:class:`QuadraticCosts` holds ``k``, ``l`` and ``Q`` (``Q_m = D_in^T diag(c_bil_m) D_out``)
for every metric at once, in float32 on the search's device: evaluating all the costs of a
step is four operations forward (a matrix-vector product, a view, an add and an ``addmv``)
and about as many backward. It is built when every costed layer is bilinear and ``Q`` is
small (up to :data:`QUADRATIC_LIMIT` entries); otherwise the layer-count path of
:class:`~hwnas.search.alive.AliveIndex` runs, in the same dtype.

Keep mask. A dense 0/1 matrix of the keep sets (which gate entries each layer input,
output, group and split piece holds) turns "every set keeps at least one gate" into a
product, an ``argmax`` and a scatter, on the device, with no host read.

Example:
    >>> import torch
    >>> d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])        # layer in = gate 0, out = gate 1
    >>> form = QuadraticCosts.from_counts(torch.zeros(2), d, torch.zeros(1),
    ...                                   torch.tensor([[0.0, 0.0, 1.0]]), torch.float32)
    >>> form(torch.tensor([3.0, 4.0])).tolist()              # one bilinear cost: in * out
    [12.0]
"""

from __future__ import annotations

import torch

__all__ = ["QUADRATIC_LIMIT", "SET_LIMIT", "DenseSets", "QuadraticCosts"]

#: Largest metrics x gates x gates that is stored as a dense quadratic form.
QUADRATIC_LIMIT = 2**24
#: Largest sets x gates that is stored as a dense set matrix.
SET_LIMIT = 2**22


class QuadraticCosts:
    """``k + (l + (Q @ alive).view(M, n)) @ alive``: the costs of ``M`` metrics."""

    def __init__(self, k: torch.Tensor, l_: torch.Tensor, q: torch.Tensor) -> None:
        self.k, self.l, self.q = k, l_, q
        self.shape = (k.shape[0], l_.shape[1])

    @classmethod
    def from_counts(cls, const: torch.Tensor, dense: torch.Tensor, c0: torch.Tensor,
                    coef: torch.Tensor, dtype: torch.dtype) -> QuadraticCosts:
        """The form of the costs ``c0 + coef @ [a_in, a_out, a_in * a_out]`` with
        ``a = const + dense @ alive`` (computed in float64, stored in ``dtype``)."""
        const, dense = const.double(), dense.double()
        c0, coef = c0.double(), coef.double()
        n = dense.shape[0] // 2
        d_in, d_out, k_in, k_out = dense[:n], dense[n:], const[:n], const[n:]
        c_in, c_out, c_bil = coef[:, :n], coef[:, n:2 * n], coef[:, 2 * n:]
        k = c0 + c_in @ k_in + c_out @ k_out + c_bil @ (k_in * k_out)
        lin = (c_in + c_bil * k_out) @ d_in + (c_out + c_bil * k_in) @ d_out
        quad = torch.einsum("li,ml,lj->mij", d_in, c_bil, d_out)
        m, g = lin.shape
        return cls(k.to(dtype), lin.to(dtype), quad.reshape(m * g, g).to(dtype))

    def to(self, device: torch.device) -> QuadraticCosts:
        return QuadraticCosts(self.k.to(device), self.l.to(device), self.q.to(device))

    def __call__(self, alive: torch.Tensor) -> torch.Tensor:
        qa = torch.mv(self.q, alive).view(self.shape)
        return torch.addmv(self.k, self.l + qa, alive)


class DenseSets:
    """The keep sets as a dense 0/1 matrix (sets x gates) on one device.

    Example:
        >>> sets = DenseSets(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]), 2, 3,
        ...                  torch.device("cpu"))
        >>> sets.keep(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([-3.0, -2.0, 5.0]))
        tensor([0., 1., 1.])
    """

    def __init__(self, set_index: torch.Tensor, set_id: torch.Tensor, n_sets: int,
                 n_gates: int, device: torch.device) -> None:
        member = torch.zeros(n_sets, n_gates, dtype=torch.bool)
        member[set_id, set_index] = True
        self.member = member.to(device)
        self.matrix = member.to(device=device, dtype=torch.float32)

    def keep(self, keep: torch.Tensor, log_alpha: torch.Tensor) -> torch.Tensor:
        """``keep`` (0/1, float) plus, for every set that keeps nothing, its gate with the
        largest ``log_alpha`` (the first one on a tie)."""
        empty = (torch.mv(self.matrix, keep.to(self.matrix.dtype)) == 0).to(keep.dtype)
        best = torch.where(self.member, log_alpha, -torch.inf).argmax(1)
        fixes = torch.zeros_like(keep).scatter_reduce_(0, best, empty, "amax")
        return torch.maximum(keep, fixes)
