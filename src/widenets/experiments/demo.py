"""`widenets demo`: infinite-width predictions against trained finite networks on real data.

On scikit-learn's digits: a fully connected ReLU net, its analytic NNGP and NTK, the NTK-GP's
test accuracy and loss over gradient-descent time (Lee et al. 2019, eq. 14), the NNGP posterior
(eq. 13), finite networks of several widths trained in torch overlaid on the prediction, and the
kernels' eigenvalue spectra.

Conventions: loss (1/2n) Σ_i ||f(x_i) - y_i||², full-batch gradient descent with rate η, so the
discrete-time NTK-GP mean after s steps is Θ(X*, X) Θ⁻¹ (I - (I - η Θ/n)^s) Y. Finite nets are
trained centered (f - f_0), whose linearization predicts exactly that mean (eq. 14 is the mean
over initializations; a single uncentered net adds the initial-function term of eq. 11).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import predict
from ..data import load_digits, load_file
from .base import ConfigError, Result, fit_slope, progress
from .common import ACTIVATIONS, fc_net, log_steps, train_gd
from .plotting import pyplot, save

ID = "demo"
TITLE = "NTK-GP and NNGP predictions vs trained finite nets on digits"
RUNTIME = "60 s"


@dataclass
class Config:
    """Options of the demo (`--set key=value`).

    Attributes:
        data: "digits" or the path of a .npz/.npy/.csv file (see `widenets.data.load_file`).
        n_train, n_test: digits split sizes.
        depth: hidden layers; w_std, b_std: σw, σb; activation: relu, erf, gelu, ...
        widths: widths of the finite nets trained in torch.
        steps: gradient-descent steps; lr_factor: η as a fraction of 2/λmax(Θ/n).
        n_times: number of (log-spaced) times at which curves are evaluated.
        diag_reg: ridge added to the NNGP train kernel, relative to its mean diagonal.
        seed: split and initialization seed.
    """

    data: str = "digits"
    n_train: int = 500
    n_test: int = 500
    depth: int = 2
    w_std: float = 2 ** 0.5
    b_std: float = 0.1
    activation: str = "relu"
    widths: tuple[int, ...] = (64, 256, 1024)
    steps: int = 600
    lr_factor: float = 0.5
    n_times: int = 30
    diag_reg: float = 1e-6
    seed: int = 0

    def check(self) -> None:
        if self.data != "digits" and not Path(self.data).is_file():
            raise ValueError(f"data must be 'digits' or an existing .npz/.npy/.csv file, got "
                             f"{self.data!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1) (a fraction of the largest stable "
                             f"rate), got {self.lr_factor}")
        if self.steps < 1 or self.n_times < 2 or self.depth < 1 or not self.widths \
                or min(self.widths) < 1:
            raise ValueError("steps, depth, widths must be >= 1 and n_times >= 2")
        if self.diag_reg < 0:
            raise ValueError(f"diag_reg must be >= 0, got {self.diag_reg}")


QUICK = dict(n_train=150, n_test=150, widths=(32, 256), steps=150, n_times=12)


def _dataset(config: Config):
    if config.data == "digits":
        return load_digits(n_train=config.n_train, n_test=config.n_test, seed=config.seed)
    try:
        ds = load_file(config.data, seed=config.seed)
    except ValueError as e:
        raise ConfigError(f"demo: data: {e}") from None
    return ds


def run(config: Config) -> Result:
    torch.manual_seed(config.seed)
    timings = {}
    t0 = time.perf_counter()
    ds = _dataset(config)
    n, k_out = ds.x_train.shape[0], ds.y_train.shape[1]
    x_all = torch.cat([ds.x_train, ds.x_test])
    net = fc_net(max(config.widths), config.depth, activation=config.activation,
                 w_std=config.w_std, b_std=config.b_std, out=k_out)
    kern = net.kernel(x_all)
    nngp, ntk = kern.nngp, kern.ntk
    k_tt, k_st = nngp[:n, :n], nngp[n:, :n]
    th_tt, th_st = ntk[:n, :n], ntk[n:, :n]
    timings["kernels_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lam_ntk = torch.linalg.eigvalsh(th_tt).flip(0)
    lam_nngp = torch.linalg.eigvalsh(k_tt).flip(0)
    # Our loss is (1/2n) Σ ||f - y||²; wn.predict uses the total loss ½ Σ ||f - y||², so a
    # step of rate η here is a step of rate η/n there. η is a fraction of the largest stable
    # rate 2/λmax(Θ/n).
    eta = config.lr_factor * n * predict.max_learning_rate(th_tt)
    steps = log_steps(config.steps, config.n_times)
    t_steps = torch.tensor(steps, dtype=torch.float64)
    gd_ntk = predict.gradient_descent_mse(th_tt, ds.y_train, learning_rate=eta / n,
                                          discrete=True)
    ntk_mean = gd_ntk(t_steps, 0.0, None, th_st)[1]                  # eq. 14, (T, m, k)
    # readout-only training: the same dynamics with K in place of Θ (Lee et al. 2019, S22)
    eta_k = config.lr_factor * n * predict.max_learning_rate(k_tt)
    gd_nngp = predict.gradient_descent_mse(k_tt, ds.y_train, learning_rate=eta_k / n,
                                           discrete=True)
    nngp_mean = gd_nngp(t_steps, 0.0, None, k_st)[1]
    # t = ∞: the NTK-GP (eq. 16) and the NNGP posterior mean (eq. 13)
    ntk_inf = predict.gp_inference(th_tt, ds.y_train, th_st, kernel="ntk",
                                   diag_reg=config.diag_reg).mean
    nngp_post = predict.gp_inference(k_tt, ds.y_train, k_st, kernel="nngp",
                                     diag_reg=config.diag_reg).mean
    timings["predictions_s"] = time.perf_counter() - t0

    def loss(pred):
        return float(0.5 * ((pred - ds.y_test) ** 2).sum(-1).mean())

    classify = ds.labels_test is not None
    acc = (lambda p: ds.accuracy(p)) if classify else (lambda p: float("nan"))
    curves = {
        "ntk_gp": {"accuracy": [acc(p) for p in ntk_mean], "loss": [loss(p) for p in ntk_mean]},
        "nngp_readout": {"accuracy": [acc(p) for p in nngp_mean],
                         "loss": [loss(p) for p in nngp_mean]},
    }

    t0 = time.perf_counter()
    finite = {}
    rmse = {}
    for width in progress(config.widths, desc="training finite nets"):
        model = fc_net(width, config.depth, activation=config.activation, w_std=config.w_std,
                       b_std=config.b_std, out=k_out).module((ds.in_dim,), seed=config.seed)
        rec = train_gd(model, ds.x_train.float(), ds.y_train.float(), learning_rate=eta,
                       steps=config.steps, record_at=steps, x_test=ds.x_test.float(),
                       center=True)
        test = rec["test"].double()
        finite[width] = {"accuracy": [acc(p) for p in test], "loss": [loss(p) for p in test]}
        # RMSE between the finite net's test outputs and the NTK-GP mean, over all times
        rmse[width] = float(((test - ntk_mean) ** 2).mean().sqrt())
    timings["finite_nets_s"] = time.perf_counter() - t0

    slope = fit_slope(list(rmse), list(rmse.values())) if len(rmse) > 1 else None
    scale = float(ntk_mean[-1].pow(2).mean().sqrt())
    metrics = {
        "n_train": n, "n_test": ds.x_test.shape[0], "learning_rate": eta,
        "chance_accuracy": 1.0 / k_out if classify else float("nan"),
        "ntk_gp_test_accuracy_final": curves["ntk_gp"]["accuracy"][-1],
        "ntk_gp_test_accuracy_inf": acc(ntk_inf),
        "nngp_posterior_test_accuracy": acc(nngp_post),
        "ntk_gp_test_loss_final": curves["ntk_gp"]["loss"][-1],
        "nngp_posterior_test_loss": loss(nngp_post),
        "finite_test_accuracy_final": {w: finite[w]["accuracy"][-1] for w in config.widths},
        "finite_rmse_to_ntk_gp": rmse,
        "finite_rmse_slope": slope,
        "ntk_gp_output_rms": scale,
        "ntk_condition_number": float(lam_ntk[0] / lam_ntk[-1].clamp_min(1e-300)),
    }
    order = torch.argsort(ds.labels_test) if classify else torch.arange(ds.x_test.shape[0])
    ntk_test = net.kernel(ds.x_test[order], get="ntk")
    data = {"steps": steps, "curves": curves, "finite": finite,
            "ntk_inf": {"accuracy": acc(ntk_inf), "loss": loss(ntk_inf)},
            "nngp_posterior": {"accuracy": acc(nngp_post), "loss": loss(nngp_post)},
            "eig_ntk": lam_ntk / n, "eig_nngp": lam_nngp / n, "ntk_test_sorted": ntk_test,
            "classify": classify, "dataset": ds.name}
    caption = (f"{ds.name}: {n} training and {ds.x_test.shape[0]} test points, a "
               f"{config.depth}-hidden-layer {config.activation} net (σw={config.w_std:.3g}, "
               f"σb={config.b_std:.3g}) trained by full-batch GD with η={eta:.3g}. The analytic "
               f"NTK-GP (eq. 14) predicts the trained nets' test curves; wider nets follow it "
               f"more closely.")
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={k: round(v, 3) for k, v in timings.items()})


def plot_all(result: Result, out: Path) -> list[tuple[Path, str]]:
    """Three PNGs: training curves, eigenvalue spectra, kernel and width agreement."""
    plt = pyplot()
    d, cfg = result.data, result.config
    steps = [max(s, 0.8) for s in d["steps"]]   # step 0 drawn at the left edge of the log axis
    colors = plt.cm.viridis([0.15 + 0.7 * i / max(1, len(d["finite"]) - 1)
                             for i in range(len(d["finite"]))])
    out = Path(out)
    images = []

    panels = ["accuracy", "loss"] if d["classify"] else ["loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4), squeeze=False,
                             layout="constrained")
    for ax, what in zip(axes[0], panels, strict=True):
        ax.plot(steps, d["curves"]["ntk_gp"][what], "k-", lw=2.2, label="NTK-GP (eq. 14)")
        ax.plot(steps, d["curves"]["nngp_readout"][what], "--", color="tab:red", lw=1.6,
                label="NNGP, readout-only training")
        ax.axhline(d["nngp_posterior"][what], color="tab:red", ls=":", lw=1.3,
                   label="NNGP posterior (eq. 13)")
        ax.axhline(d["ntk_inf"][what], color="k", ls=":", lw=1.3, label="NTK-GP, t = ∞")
        for c, (w, cur) in zip(colors, d["finite"].items(), strict=True):
            ax.plot(steps, cur[what], "o-", ms=3, lw=1, color=c, label=f"trained net, width {w}")
        if what == "accuracy" and len(steps) > 2:   # zoom on training; step 0 is chance
            later = [v for cur in (d["curves"]["ntk_gp"], *d["finite"].values())
                     for v in cur["accuracy"][1:]]
            ax.set_ylim(max(0.0, min(later) - 0.03), 1.0)
        ax.set_xscale("log")
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel(f"test {what}" + (" (½ MSE)" if what == "loss" else ""))
        if what == "loss":
            ax.set_yscale("log")
        ax.set_title(f"test {what} over training")
    axes[0][0].legend(loc="best")
    path = save(fig, out / "demo_training.png")
    images.append((path, "Test accuracy and loss over training: the NTK-GP prediction (black), "
                         "readout-only training / NNGP (red), and finite nets of several widths "
                         "trained in torch (colors). The accuracy axis starts above the chance "
                         "level of step 0."))

    fig, ax = plt.subplots(figsize=(5.2, 4))
    for key, label, c in (("eig_ntk", "NTK Θ", "k"), ("eig_nngp", "NNGP K", "tab:red")):
        ev = d[key].clamp_min(1e-18)
        ax.loglog(range(1, len(ev) + 1), ev, color=c, label=label)
    ax.set_xlabel("eigenvalue rank i")
    ax.set_ylabel("eigenvalue λᵢ / n")
    ax.set_title("spectrum of the training kernels")
    ax.legend()
    path = save(fig, out / "demo_spectrum.png")
    images.append((path, "Eigenvalues of the NTK and NNGP on the training set (divided by n): "
                         "the mode along λᵢ is learned at rate η λᵢ / n, so the tail sets how "
                         "slowly training finishes."))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    axes[0].grid(False)
    im = axes[0].imshow(d["ntk_test_sorted"].numpy(), cmap="magma")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[0].set_title("analytic NTK on test inputs (sorted by class)")
    axes[0].set_xlabel("test input")
    axes[0].set_ylabel("test input")
    widths = list(result.metrics["finite_rmse_to_ntk_gp"])
    rm = [result.metrics["finite_rmse_to_ntk_gp"][w] for w in widths]
    slope = result.metrics.get("finite_rmse_slope")
    axes[1].loglog(widths, rm, "o-", color="tab:blue",
                   label="trained net vs NTK-GP" + ("" if slope is None
                                                     else f" (fitted slope {slope:.2f})"))
    if len(widths) > 1:
        ref = [rm[0] * (w / widths[0]) ** -0.5 for w in widths]
        axes[1].loglog(widths, ref, "k--", lw=1, label="∝ width^(-1/2)")
    axes[1].set_xlabel("width")
    axes[1].set_ylabel("RMSE of test outputs vs NTK-GP mean")
    axes[1].set_title("finite nets approach the prediction")
    axes[1].legend()
    path = save(fig, out / "demo_kernels.png")
    images.append((path, "Left: the analytic NTK of the test digits, block structure by class. "
                         "Right: distance between a trained net's test outputs and the NTK-GP "
                         "mean (over all recorded times) against width."))
    del cfg
    return images
