"""Post-refit damage: what least-squares compensation leaves after removing units (structured OBS).

Compensation (:mod:`.compensate`) refits every consumer of pruned units (a Linear layer whose
input columns belong to units) by ridge least squares. For one consumer, with Z = [X, 1] its
inputs (every unit live) and Y its targets on the calibration tokens, the refit minimises

    f(theta) = ||Z theta - Y||^2 + p ||W - W0||^2,     theta = [W^T; b],

p = ridge * mean(diag(X_teacher^T X_teacher)) (a constant of the layer, not of the units kept),
W0 the teacher's weights, the bias free. f is quadratic: f = tr(theta^T A theta) - 2 tr(theta^T B)
+ c with A = Z^T Z + p D and B = Z^T Y + p D theta0 (D: 1 on the weight rows of theta, 0 on the
bias). Its optimum with every column is theta* = A^-1 B. Removing a set M of input columns
(theta_M = 0) and refitting the rest raises the optimum by exactly

    E(M) = tr(theta*_M^T [(A^-1)_MM]^-1 theta*_M)

(structured Optimal Brain Surgeon, as in ZipLM and SlimGPT; one column j: ||theta*_j||^2 /
(A^-1)_jj), and the refit of the kept columns is theta* - (A^-1)_{:,M} [(A^-1)_MM]^-1 theta*_M.
(E counts the ridge's pull of the removed columns to their teacher weights, p ||W0_M||^2, with
the squared error; with ridge 0 it is the least-squares error alone.)
So E(M) is the damage a unit set leaves *after* compensation, which is what the user keeps.

A unit owns a block of columns (a neuron one column of ``fc2``, a head ``dv`` columns of
``proj``). :func:`removal_curve` gives, for every count k of units kept, the error E and the
units kept: exactly, over every subset, for modules of at most ``EXACT_UNITS`` units (heads);
otherwise greedily, removing at each step the unit whose removal raises E least and updating
A^-1 and theta* as above (the curve is then non-decreasing as units go).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

EXACT_UNITS = 8


@dataclass
class Quadratic:
    """The refit objective of one consumer, over ``columns`` weight columns (+ bias if any).

    ``a`` and ``b`` are float64, (columns + bias) x (columns + bias) and (columns + bias) x
    outputs; ``c`` is the constant term, so ``value(theta)`` is the objective itself.
    """

    a: Tensor
    b: Tensor
    c: float
    columns: int

    @classmethod
    def ridge(cls, zz: Tensor, zy: Tensor, yy: float, columns: int, penalty: float,
              prior: Tensor) -> "Quadratic":
        """From the normal equations Z^T Z, Z^T Y, Y^T Y and the ridge towards ``prior``."""
        a, b = zz.clone(), zy.clone()
        prior = prior.to(b)
        a.diagonal()[:columns] += penalty
        b[:columns] += penalty * prior[:columns]
        return cls(a, b, yy + penalty * float((prior[:columns] ** 2).sum()), columns)

    def keep(self, columns: Tensor) -> "Quadratic":
        """The objective over the kept ``columns`` (bool, one per weight column) and the bias."""
        index = torch.cat([columns.nonzero().flatten().to(self.a.device),
                           torch.arange(self.columns, self.a.shape[0], device=self.a.device)])
        return Quadratic(self.a[index][:, index], self.b[index], self.c, int(columns.sum()))

    def solve(self) -> Tensor:
        """The minimiser (minimum-norm where singular)."""
        return torch.linalg.pinv(self.a, hermitian=True) @ self.b

    def value(self, theta: Tensor) -> float:
        theta = theta.to(self.a)
        return (float((theta * (self.a @ theta)).sum()) - 2 * float((theta * self.b).sum())
                + self.c)


def removal_error(inverse: Tensor, theta: Tensor, columns: Tensor) -> float:
    """E(M) for the columns ``columns`` (indices), from A^-1 and theta* of the live columns."""
    block = inverse[columns][:, columns]
    picked = theta[columns]
    return float((picked * torch.linalg.solve(block, picked)).sum())


def single_errors(quad: Quadratic, units: int, width: int) -> Tensor:
    """E of removing each unit alone (a per-unit score: one column j gives
    ||theta*_j||^2 / (A^-1)_jj)."""
    inverse = torch.linalg.pinv(quad.a, hermitian=True)
    return _single_errors(inverse, inverse @ quad.b, torch.stack(unit_columns(units, width)))


def _single_errors(inverse: Tensor, theta: Tensor, columns: Tensor) -> Tensor:
    """E of removing each unit alone; ``columns`` is units x width (all solved at once)."""
    blocks = inverse[columns.unsqueeze(-1), columns.unsqueeze(-2)]
    picked = theta[columns]
    return (picked * torch.linalg.solve(blocks, picked)).sum(dim=(1, 2))


def _remove(inverse: Tensor, theta: Tensor, columns: Tensor) -> tuple[Tensor, Tensor]:
    """A^-1 and theta* after removing ``columns`` (their rows and columns become zero)."""
    solve = torch.linalg.solve(inverse[columns][:, columns], torch.eye(len(columns)).to(inverse))
    left = inverse[:, columns] @ solve
    inverse = inverse - left @ inverse[columns]
    theta = theta - left @ theta[columns]
    inverse[columns] = 0
    inverse[:, columns] = 0
    theta[columns] = 0
    return inverse, theta


def unit_columns(units: int, width: int) -> list[Tensor]:
    """Column indices of each unit: unit u owns ``[u * width, (u + 1) * width)``."""
    return [torch.arange(u * width, (u + 1) * width) for u in range(units)]


def removal_curve(quad: Quadratic, units: int, width: int) -> tuple[Tensor, Tensor]:
    """(E per kept count k = 0..units, kept-unit masks (units + 1) x units) of one consumer."""
    if quad.columns != units * width:
        raise ValueError(f"the consumer has {quad.columns} columns, {units} units of {width} own "
                         f"{units * width}")
    inverse = torch.linalg.pinv(quad.a, hermitian=True)
    theta = inverse @ quad.b
    owned = unit_columns(units, width)
    if units <= EXACT_UNITS:
        return _exact_curve(inverse, theta, owned)
    return _greedy_curve(inverse, theta, owned)


def _exact_curve(inverse: Tensor, theta: Tensor, owned: list[Tensor]) -> tuple[Tensor, Tensor]:
    units = len(owned)
    error = torch.zeros(units + 1, dtype=torch.float64)
    keep = torch.zeros(units + 1, units)
    for kept in range(units + 1):
        best = None
        for removed in itertools.combinations(range(units), units - kept):
            value = (removal_error(inverse, theta, torch.cat([owned[u] for u in removed]))
                     if removed else 0.0)
            if best is None or value < best[0]:
                best = (value, removed)
        error[kept] = best[0]
        keep[kept] = 1.0
        keep[kept, list(best[1])] = 0.0
    return error, keep


def _greedy_curve(inverse: Tensor, theta: Tensor, owned: list[Tensor]) -> tuple[Tensor, Tensor]:
    units = len(owned)
    error = torch.zeros(units + 1, dtype=torch.float64)
    keep = torch.ones(units + 1, units)
    live, total = list(range(units)), 0.0
    for kept in range(units - 1, -1, -1):
        costs = _single_errors(inverse, theta, torch.stack([owned[u] for u in live]))
        step = int(torch.argmin(costs))  # the first of equal costs: the lowest unit index
        unit = live.pop(step)
        total += max(float(costs[step]), 0.0)
        inverse, theta = _remove(inverse, theta, owned[unit])
        error[kept] = total
        keep[:kept + 1, unit] = 0.0
    return error, keep
