"""How far the batch-wise Cox loss is from the full partial likelihood, on the survival twin's generating model.

The training loss compares each event only with the people of its batch. On a training split drawn
as ``covfuse data synth3d --survival --effect planted`` draws it (no images needed: the true log
hazard ``eta`` is known), for each batch size B this prints

- the mean batch loss at the true risk ``eta`` against the full-split loss (the risk sets shrink by
  about B / N, so the batch loss is lower by about log(N / B));
- ``c*``: the scale c that minimises the expected loss of risk ``c * eta`` (the full likelihood's is
  about 1: the truth); a batch loss whose minimum lies at another c pulls the model's log hazard
  ratios towards that scale;
- the cosine between the full gradient and one batch-loss epoch's summed gradient at ``0.5 * eta``.

    python benchmarks/survival_batch.py            # 360 training subjects, as the twin's 600-subject split
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from covfuse.data.twins import brains as s3
from covfuse.data.twins import survival as sv
from covfuse.training.module import cox_loss


def epoch_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, batch: int, rng: np.random.Generator,
               ties: str = "breslow") -> torch.Tensor:
    """The mean over one shuffled epoch's batches (last partial batch dropped, as training does)."""
    order = torch.from_numpy(rng.permutation(len(time)))
    n = len(time) // batch * batch
    losses = [cox_loss(risk[order[i:i + batch]], time[order[i:i + batch]], event[order[i:i + batch]], ties=ties)
              for i in range(0, n, batch)]  # a loop over batches, as the trainer takes them
    return torch.stack(losses).mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=360, help="training subjects (default: 360)")
    p.add_argument("--epochs", type=int, default=40, help="shuffles averaged per batch size (default: 40)")
    p.add_argument("--batches", default="8,16,32,64,128", help="batch sizes (default: 8,16,32,64,128)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    subjects = s3.draw_subjects(args.n, args.seed, "planted", 2, 0.05)
    eta = sv.log_hazard(subjects, "planted", s3.DISEASE_STEP)
    t, e = sv.draw_times(eta, np.random.default_rng([args.seed, 5]))
    eta = torch.tensor(eta - eta.mean())
    time, event = torch.tensor(t, dtype=torch.float64), torch.tensor(e, dtype=torch.float64)
    scales = np.round(np.arange(0.3, 1.61, 0.05), 2)
    full = [float(cox_loss(c * eta, time, event)) for c in scales]
    g = (0.5 * eta).clone().requires_grad_(True)
    cox_loss(g, time, event).backward()
    full_grad = g.grad.clone()
    print(f"{args.n} subjects, {int(e.sum())} events; full partial likelihood at eta: {full[list(scales).index(1.0)]:.4f},"
          f" c* = {scales[int(np.argmin(full))]:.2f}")
    print("| batch | mean batch loss at eta | full - batch | c* | cosine to the full gradient |")
    print("|---|---|---|---|---|")
    for b in (int(x) for x in args.batches.split(",")):
        rng = np.random.default_rng(args.seed)
        at_eta = float(np.mean([float(epoch_loss(eta, time, event, b, rng)) for _ in range(args.epochs)]))
        curve = []
        for c in scales:
            rng = np.random.default_rng(args.seed)  # the same shuffles for every c
            curve.append(float(np.mean([float(epoch_loss(c * eta, time, event, b, rng)) for _ in range(args.epochs)])))
        cosines = []
        rng = np.random.default_rng(args.seed + 1)
        for _ in range(min(args.epochs, 10)):
            g = (0.5 * eta).clone().requires_grad_(True)
            epoch_loss(g, time, event, b, rng).backward()
            cosines.append(float(torch.nn.functional.cosine_similarity(g.grad, full_grad, dim=0)))
        print(f"| {b} | {at_eta:.4f} | {full[list(scales).index(1.0)] - at_eta:.4f} | {scales[int(np.argmin(curve))]:.2f}"
              f" | {np.mean(cosines):.3f} |")


if __name__ == "__main__":
    main()
