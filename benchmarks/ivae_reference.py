"""The iVAE reference recipe (Khemakhem et al. 2020), written afresh, on its own data and on the package's.

What it reimplements (defaults = the settings of the authors' public code, ``ilkhem/iVAE``; see
``docs/results/ivae_reference.md`` for which were read from that code and which are assumptions):

* **data** (``--data reference``): ``ns = 40`` segments x ``nps = 1000`` points, ``n = 5`` sources;
  within segment ``u`` each source is ``N(m_u, L_u^2)`` with the scale ``L_u ~ U[0.5, 3]`` (per segment and
  source) and ``m_u = 0`` (``--uncentered`` draws ``m_u ~ U[-5, 5]``); the mixing is an MLP of
  ``--mix-layers 3`` linear maps, all equal to one random matrix ``A`` (entries ``U[-1, 1]``, columns of unit
  norm, redrawn until its condition number is below the 25th percentile of ``--cond-draws`` such matrices),
  with a leaky ReLU (slope ``--mix-slope``) after every map but the last; no observation noise.
* **model**: encoder ``q(z | x, u) = N(g(x, u), diag exp(logv(x, u)))``, prior ``p(z | u) = N(0, diag
  exp(logl(u)))``, decoder ``p(x | z) = N(f(z), 0.01 I)``; ``g``, ``logv``, ``logl``, ``f`` are MLPs of
  ``--layers 3`` linear maps (hidden width ``--hidden 200``, leaky ReLU slope 0.1, Xavier-uniform weights),
  ``u`` the one-hot segment.
* **training**: the one-sample Monte-Carlo ELBO ``log p(x|z) + log p(z|u) - log q(z|x,u)``; Adam, learning
  rate ``1e-2``, ``ReduceLROnPlateau`` (factor 0.1, patience 4) stepped once per epoch on the epoch's mean
  training loss; mini-batches of 64 from a reshuffled epoch; ``--iterations 70000``.
* **its score** (on the training data): MCC of a *sampled* ``z ~ q(z | x, u)`` (what the reference reports),
  also of the posterior mean and of FastICA applied to the sample; **our score**: MCC of the posterior mean
  on 500 **held-out** samples per segment (a fresh sample stream of the same mechanism). Every MCC is
  :func:`sit_causal.metrics.mcc` (Pearson, Hungarian matching).

``--data project`` trains the same model on the package's own data of ``benchmarks/ivae_home.py`` (the
meta-SCM with ``gauss-meanvar`` factors, means ``U[-5, 5]``, 3-layer leaky-ReLU mixing, 0.01 noise).

    .venv/bin/python benchmarks/ivae_reference.py --seeds 0,1,2 --data reference \\
        --out docs/results/data/ivae_reference_refdata.json
    .venv/bin/python benchmarks/ivae_reference.py --seeds 0,1,2 --data project \\
        --out docs/results/data/ivae_reference_projdata.json

All randomness comes from explicit generators seeded by ``--seeds`` (data: ``--data-seed`` if given).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sit_causal.experiments.report import format_mean_ci, mean_ci
from sit_causal.fileio import write_text_atomic
from sit_causal.metrics import mcc

LOG_2PI = math.log(2.0 * math.pi)


# ====================================================================== data
@dataclass(frozen=True)
class Segmented:
    """Samples with their segment: ``x`` ``(N, d_x)``, true sources ``s`` ``(N, n)``, ``seg`` ``(N,)`` int."""

    x: np.ndarray
    s: np.ndarray
    seg: np.ndarray


@dataclass(frozen=True)
class ReferenceMechanism:
    """Per-segment source scales and means and the mixing matrix of the reference generator."""

    scales: np.ndarray  # (n_seg, n): standard deviation of each source in each segment
    means: np.ndarray  # (n_seg, n)
    mixing: np.ndarray  # (n, n): the one matrix used by every layer
    layers: int
    slope: float

    @property
    def n_segments(self) -> int:
        return int(self.scales.shape[0])

    def mix(self, s: np.ndarray) -> np.ndarray:
        """``x = A^T (a(A^T (... a(A^T s))))``: ``layers`` linear maps, a leaky ReLU between two of them."""
        h = s
        for layer in range(self.layers):
            h = h @ self.mixing
            if layer < self.layers - 1:
                h = np.where(h > 0, h, self.slope * h)
        return h

    def sample(self, seg: np.ndarray, rng: np.random.Generator) -> Segmented:
        """Sources for the segment labels ``seg`` and their observations."""
        s = rng.standard_normal((seg.shape[0], self.scales.shape[1])) * self.scales[seg] + self.means[seg]
        return Segmented(x=self.mix(s), s=s, seg=seg)


def _unit_columns(rng: np.random.Generator, n: int) -> np.ndarray:
    a = rng.uniform(-1.0, 1.0, (n, n))
    return a / np.sqrt((a**2).sum(axis=0, keepdims=True))


def well_conditioned_matrix(n: int, rng: np.random.Generator, cond_draws: int = 10_000) -> np.ndarray:
    """A random ``(n, n)`` matrix with entries ``U[-1, 1]`` and unit-norm columns whose condition number is
    below the 25th percentile of ``cond_draws`` such matrices (redrawn until it is)."""
    threshold = np.percentile([np.linalg.cond(_unit_columns(rng, n)) for _ in range(cond_draws)], 25)
    while True:
        a = _unit_columns(rng, n)
        if np.linalg.cond(a) <= threshold:
            return a


def reference_mechanism(n_segments: int, n: int, rng: np.random.Generator, layers: int = 3, slope: float = 0.1,
                        scale_bounds: tuple[float, float] = (0.5, 3.0), uncentered: bool = False,
                        mean_bound: float = 5.0, cond_draws: int = 10_000) -> ReferenceMechanism:
    """Draw the reference generator's segment parameters and mixing matrix."""
    scales = rng.uniform(scale_bounds[0], scale_bounds[1], (n_segments, n))
    means = rng.uniform(-mean_bound, mean_bound, (n_segments, n)) if uncentered else np.zeros((n_segments, n))
    return ReferenceMechanism(scales=scales, means=means, mixing=well_conditioned_matrix(n, rng, cond_draws),
                              layers=layers, slope=slope)


def segment_labels(n_segments: int, per_segment: int) -> np.ndarray:
    """``0 ... 0 1 ... 1 ...``: ``per_segment`` labels for each segment, in order."""
    return np.repeat(np.arange(n_segments), per_segment)


def reference_sets(seed: int, args: argparse.Namespace, train_seg: np.ndarray | None = None,
                   test_seg: np.ndarray | None = None) -> tuple[Segmented, Segmented]:
    """Training set (``nps`` per segment) and held-out set (``test_nps`` per segment) of one mechanism, or
    one sample for each given segment label (``train_seg``, ``test_seg``)."""
    mech_ss, train_ss, test_ss = np.random.SeedSequence([seed, 20200101]).spawn(3)
    mech = reference_mechanism(args.ns, args.dim, np.random.default_rng(mech_ss), args.mix_layers, args.mix_slope,
                               (args.scale_low, args.scale_high), args.uncentered, 5.0, args.cond_draws)
    train_seg = segment_labels(args.ns, args.nps) if train_seg is None else train_seg
    test_seg = segment_labels(args.ns, args.test_nps) if test_seg is None else test_seg
    return (mech.sample(train_seg, np.random.default_rng(train_ss)),
            mech.sample(test_seg, np.random.default_rng(test_ss)))


def project_sets(seed: int) -> tuple[Segmented, Segmented]:
    """The package's own data of ``benchmarks/ivae_home.py`` (the same meta-SCM and sample streams)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ivae_home import project_train_test

    train, test = project_train_test(seed)
    return (Segmented(x=train.x, s=train.latents, seg=train.dataset_id),
            Segmented(x=test.x, s=test.latents, seg=test.dataset_id))


# ====================================================================== model
class MLP(nn.Module):
    """``layers`` linear maps with a leaky ReLU between two of them."""

    def __init__(self, d_in: int, d_out: int, hidden: int, layers: int, slope: float, gen: torch.Generator):
        super().__init__()
        dims = [d_in] + [hidden] * (layers - 1) + [d_out]
        self.maps = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.slope = slope
        with torch.no_grad():
            for lin in self.maps:
                fan_in, fan_out = lin.in_features, lin.out_features
                bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier uniform
                lin.weight.copy_(torch.rand(lin.weight.shape, generator=gen) * 2 * bound - bound)
                b = 1.0 / math.sqrt(fan_in)  # torch's default bias initialisation
                lin.bias.copy_(torch.rand(lin.bias.shape, generator=gen) * 2 * b - b)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, lin in enumerate(self.maps):
            h = lin(h)
            if i < len(self.maps) - 1:
                h = nn.functional.leaky_relu(h, self.slope)
        return h


def normal_logpdf(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    return -0.5 * (LOG_2PI + var.log() + (x - mean) ** 2 / var).sum(-1)


class ReferenceIVAE(nn.Module):
    """iVAE with ``q(z|x,u)``, a zero-mean prior whose variance depends on ``u`` (``learn_prior_mean`` adds a
    mean MLP), and a decoder of fixed variance."""

    def __init__(self, x_dim: int, z_dim: int, u_dim: int, hidden: int, layers: int, slope: float,
                 decoder_var: float, gen: torch.Generator, learn_prior_mean: bool = False):
        super().__init__()
        self.prior_logvar = MLP(u_dim, z_dim, hidden, layers, slope, gen)
        self.prior_mean = MLP(u_dim, z_dim, hidden, layers, slope, gen) if learn_prior_mean else None
        self.decoder = MLP(z_dim, x_dim, hidden, layers, slope, gen)
        self.enc_mean = MLP(x_dim + u_dim, z_dim, hidden, layers, slope, gen)
        self.enc_logvar = MLP(x_dim + u_dim, z_dim, hidden, layers, slope, gen)
        self.register_buffer("decoder_var", torch.tensor(decoder_var))

    def posterior(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xu = torch.cat((x, u), 1)
        return self.enc_mean(xu), self.enc_logvar(xu).exp()

    def elbo(self, x: torch.Tensor, u: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample one-draw ELBO ``(B,)`` and the draw ``z`` ``(B, n)``."""
        mean, var = self.posterior(x, u)
        z = mean + var.sqrt() * torch.randn(mean.shape, generator=gen)
        prior_mean = self.prior_mean(u) if self.prior_mean is not None else torch.zeros_like(z)
        log_px = normal_logpdf(x, self.decoder(z), self.decoder_var.expand_as(x))
        log_pz = normal_logpdf(z, prior_mean, self.prior_logvar(u).exp())
        return log_px + log_pz - normal_logpdf(z, mean, var), z


# ====================================================================== training and scoring
def one_hot(seg: np.ndarray, n_segments: int) -> torch.Tensor:
    return nn.functional.one_hot(torch.as_tensor(seg, dtype=torch.long), n_segments).float()


def _tensors(data: Segmented, n_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(data.x, dtype=torch.float32), one_hot(data.seg, n_segments)


@torch.no_grad()
def held_out_loss(model: ReferenceIVAE, x: torch.Tensor, u: torch.Tensor, seed: int) -> float:
    """Mean negative ELBO on ``(x, u)`` with a fixed draw."""
    model.eval()
    loss = -model.elbo(x, u, torch.Generator().manual_seed(seed))[0].mean().item()
    model.train()
    return loss


@torch.no_grad()
def posterior_mean(model: ReferenceIVAE, x: torch.Tensor, u: torch.Tensor) -> np.ndarray:
    return model.posterior(x, u)[0].double().numpy()


def train(model: ReferenceIVAE, train_set: Segmented, test_set: Segmented, n_segments: int, args: argparse.Namespace,
          gen: torch.Generator, label: str) -> dict[str, object]:
    """The reference schedule; returns the loss and learning-rate curves (one entry per epoch)."""
    x, u = _tensors(train_set, n_segments)
    xt, ut = _tensors(test_set, n_segments)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=args.lr_factor,
                                                       patience=args.patience)
    n = x.shape[0]
    curve: list[dict[str, float]] = []
    it, epoch, t0 = 0, 0, time.perf_counter()
    diverged_at: int | None = None
    model.train()
    while it < args.iterations and diverged_at is None:
        epoch += 1
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n, args.batch_size):
            if it >= args.iterations:
                break
            idx = order[start:start + args.batch_size]
            loss = -model.elbo(x[idx], u[idx], gen)[0].mean()
            if not torch.isfinite(loss):  # the reference has no guard: its run is lost from here on
                diverged_at = it + 1
                print(f"{label} it {it + 1}: non-finite loss, run diverged", flush=True)
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            total += loss.item()
            count += 1
            if it % args.progress_every == 0:
                print(f"{label} it {it}/{args.iterations} epoch {epoch} loss {loss.item():.3f} "
                      f"lr {opt.param_groups[0]['lr']:.0e} {time.perf_counter() - t0:.0f} s", flush=True)
        if diverged_at is not None:
            break
        train_loss = total / max(count, 1)
        row = {"epoch": epoch, "iteration": it, "lr": opt.param_groups[0]["lr"], "train_loss": train_loss,
               "heldout_loss": held_out_loss(model, xt, ut, 0)}
        if args.mcc_every and epoch % args.mcc_every == 0:
            row["heldout_mcc"] = mcc(test_set.s, posterior_mean(model, xt, ut)).score
        curve.append(row)
        sched.step(train_loss)
    return {"curve": curve, "iterations": it, "diverged_at": diverged_at, "epochs": epoch,
            "time_s": time.perf_counter() - t0, "s_per_iteration": (time.perf_counter() - t0) / max(it, 1)}


@torch.no_grad()
def reference_scores(model: ReferenceIVAE, data: Segmented, n_segments: int, seed: int) -> dict[str, float]:
    """The reference's scores on the training data: MCC of a sampled ``z``, of the posterior mean, and of
    FastICA of the sample (and the best of the three)."""
    from sklearn.decomposition import FastICA

    x, u = _tensors(data, n_segments)
    mean, var = model.posterior(x, u)
    z = (mean + var.sqrt() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))).double().numpy()
    ica = FastICA(random_state=np.random.RandomState(seed), whiten="unit-variance", max_iter=1000)
    scores = {"mcc_sample": mcc(data.s, z).score, "mcc_mean_train": mcc(data.s, mean.double().numpy()).score,
              "mcc_fastica_sample": mcc(data.s, ica.fit_transform(z)).score}
    scores["mcc_best_of_three"] = max(scores.values())
    return scores


def run_one(seed: int, args: argparse.Namespace) -> dict[str, object]:
    data_seed = seed if args.data_seed is None else args.data_seed
    train_set, test_set = reference_sets(data_seed, args) if args.data == "reference" else project_sets(data_seed)
    if args.standardise:
        mu, sd = train_set.x.mean(0), train_set.x.std(0) + 1e-8
        train_set = Segmented(x=(train_set.x - mu) / sd, s=train_set.s, seg=train_set.seg)
        test_set = Segmented(x=(test_set.x - mu) / sd, s=test_set.s, seg=test_set.seg)
    n_segments = int(train_set.seg.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    model = ReferenceIVAE(train_set.x.shape[1], train_set.s.shape[1], n_segments, args.hidden, args.layers,
                          args.slope, args.decoder_var, gen, learn_prior_mean=args.prior_mean == "learned")
    load0 = os.getloadavg()[0]
    log = train(model, train_set, test_set, n_segments, args, gen, f"[{args.data} seed {seed}]")
    xt, ut = _tensors(test_set, n_segments)
    nan = float("nan")
    if log["diverged_at"] is None:
        scores = {"mcc_heldout_mean": mcc(test_set.s, posterior_mean(model, xt, ut)).score,
                  **reference_scores(model, train_set, n_segments, seed)}
    else:
        scores = {k: nan for k in ("mcc_heldout_mean", "mcc_sample", "mcc_mean_train", "mcc_fastica_sample",
                                   "mcc_best_of_three")}
    row: dict[str, object] = {"seed": seed, "data_seed": data_seed, "load_1min": load0, **scores, **log}
    print(f"[{args.data} seed {seed}] held-out posterior-mean MCC {row['mcc_heldout_mean']:.3f}; training: sample "
          f"{row['mcc_sample']:.3f}, mean {row['mcc_mean_train']:.3f}, FastICA {row['mcc_fastica_sample']:.3f}; "
          f"{log['iterations']} it in {log['time_s']:.0f} s ({1e3 * log['s_per_iteration']:.2f} ms/it, "
          f"load {load0:.1f})", flush=True)
    return row


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated model (and data) seeds")
    ap.add_argument("--data-seed", type=int, default=None, help="one data seed for every model seed")
    ap.add_argument("--data", choices=("reference", "project"), default="reference")
    g = ap.add_argument_group("reference data")
    g.add_argument("--ns", type=int, default=40, help="segments")
    g.add_argument("--nps", type=int, default=1000, help="training points per segment")
    g.add_argument("--test-nps", type=int, default=500, help="held-out points per segment")
    g.add_argument("--dim", type=int, default=5, help="sources = observations")
    g.add_argument("--mix-layers", type=int, default=3)
    g.add_argument("--mix-slope", type=float, default=0.1, help="leaky-ReLU slope of the mixing")
    g.add_argument("--scale-low", type=float, default=0.5, help="source standard deviations U[low, high]")
    g.add_argument("--scale-high", type=float, default=3.0)
    g.add_argument("--uncentered", action="store_true", help="segment means U[-5, 5] (default: zero)")
    g.add_argument("--cond-draws", type=int, default=10_000, help="draws fixing the condition-number threshold")
    m = ap.add_argument_group("model and training")
    m.add_argument("--hidden", type=int, default=200)
    m.add_argument("--layers", type=int, default=3, help="linear maps per MLP")
    m.add_argument("--slope", type=float, default=0.1, help="leaky-ReLU slope of the networks")
    m.add_argument("--decoder-var", type=float, default=0.01)
    m.add_argument("--prior-mean", choices=("zero", "learned"), default="zero")
    m.add_argument("--standardise", action="store_true", help="standardise x (the reference does not)")
    m.add_argument("--lr", type=float, default=1e-2)
    m.add_argument("--lr-factor", type=float, default=0.1)
    m.add_argument("--patience", type=int, default=4)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--iterations", type=int, default=70_000)
    o = ap.add_argument_group("output")
    o.add_argument("--progress-every", type=int, default=5000, help="iterations between progress lines")
    o.add_argument("--mcc-every", type=int, default=5, help="epochs between held-out MCCs in the curve (0: none)")
    o.add_argument("--threads", type=int, default=1)
    o.add_argument("--out", default=None, help="JSON file for every run")
    return ap


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    out: dict[str, object] = {"settings": vars(args), "machine": platform.processor() or platform.machine(),
                              "cpus": os.cpu_count(), "torch": torch.__version__, "runs": []}
    rows = []
    for seed in seeds:
        rows.append(run_one(seed, args))
        out["runs"] = rows
        if args.out:  # after every seed, so that a long run leaves what it has
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(args.out), json.dumps(out, indent=1) + "\n")
    summary: dict[str, object] = {"diverged": [r["seed"] for r in rows if r["diverged_at"] is not None]}
    for key in ("mcc_heldout_mean", "mcc_sample", "mcc_mean_train", "mcc_fastica_sample", "mcc_best_of_three"):
        vals = [float(r[key]) for r in rows if r["diverged_at"] is None]  # type: ignore[arg-type]
        if not vals:
            continue
        summary[key] = {"mean": mean_ci(vals)[0], "ci95": mean_ci(vals)[1], "values": vals}
        print(f"{args.data} data, {key}: {format_mean_ci(vals)} (diverged: {summary['diverged']})", flush=True)
    out["summary"] = summary
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
