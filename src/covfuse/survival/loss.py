"""The Cox partial likelihood of a batch, the loss of a survival head (Breslow's or Efron's tie rule)."""
from __future__ import annotations

import torch


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, ties: str = "breslow") -> torch.Tensor:
    """Negative Cox partial log-likelihood of ``risk`` (N,) over the batch, divided by the number of
    events. Breslow's ties: ``-sum_{i: event} (risk_i - log sum_{j: time_j >= time_i} exp(risk_j))``;
    Efron's (``ties="efron"``): the l-th of the d events tied at one time (l = 0..d-1) has the risk set
    minus l/d of the tied events' total, ``log(sum_{R} exp(r) - l/d sum_{D} exp(r))``. A batch without
    events has no term: its loss is a zero that keeps the graph. Times are compared in float64 (as
    given): a float32 cast would tie 1000.00001 and 1000.00002.

    Written here rather than taken from torchsurv (0.2.0, ``neg_partial_log_likelihood``): when no two
    events share a time it takes its no-ties path, which leaves a censored sample whose time equals an
    event's out of that event's risk set whenever the unstable sort puts it first (tests/training/test_survival_head.py
    has the case). Tied times are common (times in whole months or visits), so the risk set is found
    here by ``searchsorted`` on the sorted times, where ties cannot be split.
    """
    risk = risk.float().reshape(-1)
    time = time.reshape(-1)
    if not time.is_floating_point():
        time = time.double()
    event = event.reshape(-1) > 0.5
    events = event.sum()
    order = torch.argsort(time)
    t, r, e = time[order], risk[order], event[order]
    # log sum_{k >= position} exp(r_k) on the ascending times; a tied block starts at its first position.
    tail = torch.logcumsumexp(r.flip(0), dim=0).flip(0)
    first = torch.searchsorted(t, t, right=False)
    log_risk_set = tail[first]
    if ties == "efron":
        # tied events: D = the events at one time; the l-th of them (l = 0..d-1) leaves l/d of D's total out
        block = first  # every sample of one time shares the block's first position
        n = len(t)
        ev = e.to(r.dtype)
        d = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, block, ev)[block]  # events tied here
        before = torch.cumsum(ev, 0) - ev  # events at earlier positions
        rank = before - before[block]  # l: events before this one at the same time
        peak = torch.full((n,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
            0, block, torch.where(e, r, torch.full_like(r, -torch.inf)), reduce="amax")[block]
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        tied = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, block, torch.exp(r - peak) * ev)[block]
        log_tied = torch.log(tied.clamp(min=torch.finfo(r.dtype).tiny)) + peak  # log sum_{D} exp(r)
        share = (rank / d.clamp(min=1)) * torch.exp(log_tied - log_risk_set)
        log_risk_set = log_risk_set + torch.log1p(-share.clamp(max=1 - 1e-7)) * e
    terms = (r - log_risk_set) * e
    return -terms.sum() / events.clamp(min=1)
