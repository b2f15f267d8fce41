"""Seaborn figures of collapse."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from directclr.analysis import log_spectrum  # noqa: E402


def _finish(fig: plt.Figure, ax: plt.Axes, note: str) -> plt.Figure:
    """Say in small print what the axes show, lay the figure out and detach it from pyplot."""
    ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color="0.4")
    fig.tight_layout()
    plt.close(fig)
    return fig


# What the model stages' spectra are: the project's one convention.
NORMALISED_NOTE = "eigenvalues of the covariance of L2-normalised vectors"


def spectrum_figure(
    spectra: dict[str, np.ndarray],
    title: str,
    rank_limit: int | None = None,
    note: str = NORMALISED_NOTE,
) -> plt.Figure:
    """Log10 covariance eigenvalues against their rank, one line per named spectrum.

    ``rank_limit`` (N - 1 for N vectors) draws where the rank of any N centred vectors
    ends: eigenvalues past it are zero (or rounding) whatever the model. ``note`` says in
    small print which eigenvalues these are.
    """
    frame = pd.concat(
        pd.DataFrame(
            {
                "singular value rank index": np.arange(1, len(lam) + 1),
                "log10 eigenvalue": log_spectrum(lam, floor=1e-20),
                "vectors": name,
            }
        )
        for name, lam in spectra.items()
    )
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    sns.lineplot(
        data=frame, x="singular value rank index", y="log10 eigenvalue", hue="vectors", ax=ax
    )
    if rank_limit is not None:
        ax.axvline(rank_limit, color="0.5", linestyle=":", linewidth=1)
        ax.text(rank_limit, 0.98, " N - 1", transform=ax.get_xaxis_transform(), va="top",
                fontsize=7, color="0.4")  # fmt: skip
    ax.set_title(title)
    # A toy's note names its probe too: wrapped, so it stays inside the axes.
    return _finish(fig, ax, textwrap.fill(f"{note} (zeros drawn at 1e-20)", 90))


def training_history_figure(history: pd.DataFrame, title: str) -> plt.Figure:
    """Loss, online-probe accuracy and effective ranks of r and z against the epoch."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=120)
    sns.lineplot(data=history, x="epoch", y="loss", ax=axes[0], marker="o")
    axes[0].set_title("InfoNCE loss")
    sns.lineplot(data=history, x="epoch", y="online_probe_accuracy", ax=axes[1], marker="o")
    axes[1].set_title("online linear probe (train batches)")
    ranks = history.melt(
        id_vars="epoch", value_vars=["effective_rank_r", "effective_rank_z"],
        var_name="vectors", value_name="effective rank",
    ).dropna()  # fmt: skip
    ranks["vectors"] = ranks["vectors"].str.removeprefix("effective_rank_")
    sns.lineplot(data=ranks, x="epoch", y="effective rank", hue="vectors", ax=axes[2], marker="o")
    axes[2].set_title("effective rank on a fixed probe batch")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str) -> plt.Figure:
    """Row-normalised confusion matrix (rows: true class, columns: predicted class)."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(12, 2 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=120)
    sns.heatmap(rates, ax=ax, cmap="Blues", vmin=0, vmax=1, square=True,
                annot=len(classes) <= 12, fmt=".2f", cbar_kws={"label": "share of true class"},
                xticklabels=classes, yticklabels=classes)  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def spectra_overlay_figure(spectra: pd.DataFrame, title: str) -> plt.Figure:
    """Log spectra of r (left) and z (right), one line per run: the mean over its seeds of
    log10 eigenvalue at each rank, with a band of +-1 std over seeds.

    ``spectra`` is long: the spectrum stage's tables of every run and seed, with ``run``
    and ``seed`` columns added."""
    frame = spectra.copy()
    frame["log10 eigenvalue"] = log_spectrum(frame["eigenvalue"].to_numpy(), floor=1e-20)
    split = frame["split"].iloc[0] if len(frame) else "?"
    seeds = frame["seed"].nunique() if "seed" in frame else 1
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for ax, kind in zip(axes, ("r", "z"), strict=True):
        sns.lineplot(data=frame[frame["vectors"] == kind], x="index", y="log10 eigenvalue",
                     hue="run", errorbar="sd", ax=ax)  # fmt: skip
        ax.set_title(f"{kind}: covariance eigenvalues, L2-normalised ({split} split)", fontsize=9)
        ax.set_xlabel(f"rank index (mean ± std over {seeds} seeds)")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def spectrum_history_figure(
    history: pd.DataFrame,
    title: str,
    time: str = "epoch",
    panel: str = "vectors",
    note: str = f"{NORMALISED_NOTE} on a fixed probe batch",
) -> plt.Figure:
    """The spectrum over training: heatmaps of log10 eigenvalue, rank index against ``time``.

    ``history`` is long: one row per (``panel`` value, ``time``, ``index``) with its
    ``eigenvalue``; ``note`` says which eigenvalues (by default the pretraining stage's: the
    covariance of L2-normalised vectors on a fixed probe batch). One panel per value of
    ``panel`` (r and z for pretraining, noise levels or depths for the toys), all on one
    colour scale. An empty history gives a figure that says so.
    """
    if history.empty:
        fig, ax = plt.subplots(figsize=(5, 2), dpi=120)
        ax.axis("off")
        ax.text(0.5, 0.5, "no spectra were recorded during training", ha="center")
        ax.set_title(title)
        plt.close(fig)
        return fig
    frame = history.assign(log10=log_spectrum(history["eigenvalue"].to_numpy(), floor=1e-20))
    panels = list(dict.fromkeys(frame[panel]))
    vmax = frame["log10"].max()
    vmin = max(frame["log10"].min(), vmax - 20)
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    sns.set_theme(style="white")
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.5 + 3.8 * columns, 0.5 + 3.5 * rows), dpi=120, squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    for ax, value in zip(axes.flat, panels, strict=False):
        grid = frame[frame[panel] == value].pivot_table(index="index", columns=time, values="log10")
        sns.heatmap(grid, ax=ax, cmap="viridis", vmin=vmin, vmax=vmax,
                    cbar_kws={"label": "log10 eigenvalue"})  # fmt: skip
        ax.set_title(f"{panel} {value}")
        ax.set_xlabel(time)
        ax.set_ylabel("singular value rank index")
        ax.tick_params(axis="y", labelrotation=0)
    fig.suptitle(title)
    fig.text(0.01, 0.01, note, fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    plt.close(fig)
    return fig


def collapsed_vs_d0_figure(runs: pd.DataFrame, title: str) -> plt.Figure:
    """Collapsed dimensions against d0 when several runs exist, one line per ``vectors``.

    ``runs`` has one row per (run, vectors) with columns ``d0``, ``vectors`` (r, z and r's
    two parts, :data:`~directclr.projectors.HEAD` and :data:`~directclr.projectors.TAIL`) and
    ``collapsed_dimensions``, as in the spectrum stage's metrics.
    """
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    sns.lineplot(data=runs.sort_values("d0"), x="d0", y="collapsed_dimensions", hue="vectors",
                 marker="o", errorbar="sd", err_style="bars", ax=ax)  # fmt: skip
    ax.set_ylabel("collapsed dimensions")
    ax.set_title(f"{title}\n(mean ± std over seeds)", fontsize=10)
    return _finish(
        fig,
        ax,
        "collapsed: numerically zero, or below the log spectrum's deepest cliff; "
        "structural zeros (N - 1 < d) not counted",
    )


def alignment_figure(matrices: dict[str, np.ndarray], title: str) -> plt.Figure:
    """Heatmaps of alignment matrices |V_{l+1}^T U_l|, one panel per named matrix.

    Entry (i, j) is |<v_i, u_j>|: v_i the i-th right singular vector of the upper layer, u_j
    the j-th left singular vector of the lower one, both by decreasing singular value. A
    permutation (the identity when the orders agree) means the two layers are aligned.
    """
    sns.set_theme(style="white")
    fig, axes = plt.subplots(
        1, len(matrices), figsize=(1.5 + 5 * len(matrices), 5.4), dpi=120, squeeze=False
    )
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        ticks = np.arange(1, matrix.shape[0] + 1)
        sns.heatmap(matrix, ax=ax, cmap="magma", vmin=0, vmax=1, square=True,
                    xticklabels=ticks, yticklabels=ticks)  # fmt: skip
        ax.tick_params(labelsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("left singular vector of the lower layer", fontsize=9)
        ax.set_ylabel("right singular vector of the upper layer", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def final_spectrum_figure(
    history: pd.DataFrame, panel: str, title: str, note: str = NORMALISED_NOTE
) -> plt.Figure:
    """The last recorded spectrum of each value of ``panel`` in a spectrum history, as
    :func:`spectrum_figure` lines (one per setting), ``note`` saying which eigenvalues."""
    final = history[history["step"] == history["step"].max()].sort_values("index")
    spectra = {
        f"{panel} {value}": run["eigenvalue"].to_numpy() for value, run in final.groupby(panel)
    }
    return spectrum_figure(spectra, title, note=note)


def collapse_prediction_figure(prediction: pd.DataFrame, title: str, note: str) -> plt.Figure:
    """Over training, per noise level: the theory's negative eigenvalues (predicted), the
    collapsed directions of W (observed), and how the negative eigenspace at initialisation
    overlaps the directions collapsed at each step, against random subspaces (dotted).

    ``prediction`` is :func:`directclr.toys.noise_sweep`'s table: columns ending ``_x`` are
    for Lemma 2's X and W, those ending ``_trained`` (when present) for the exact X~ of the
    loss trained and W~ = [W | b]."""
    matrices = [("x", "X", "W")]
    if "negative_trained" in prediction and prediction["negative_trained"].notna().any():
        matrices.append(("trained", "X~", "W~"))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2 + len(matrices), figsize=(5 + 4 * len(matrices), 3.9), dpi=120)
    frame = prediction.assign(noise=prediction["noise"].astype(str))
    counts = (("negative", "predicted: negative eigenvalues of {}", 0),
              ("collapsed", "observed: collapsed directions of {}", 1))  # fmt: skip
    for prefix, label, column in counts:
        long = pd.concat(
            frame.assign(matrix=name if prefix == "negative" else weight,
                         value=frame[f"{prefix}_{key}" if prefix == "negative"
                                     else f"collapsed_{key}_space"])
            for key, name, weight in matrices
        ).dropna(subset=["value"])  # fmt: skip
        names = [name if prefix == "negative" else weight for _, name, weight in matrices]
        sns.lineplot(data=long, x="step", y="value", hue="noise", style="matrix",
                     style_order=names, ax=axes[column], legend=column == 0)  # fmt: skip
        axes[column].set_title(label.format(" / ".join(names)), fontsize=9)
        axes[column].set_ylabel("")
    for ax, (key, name, weight) in zip(axes[2:], matrices, strict=True):
        sns.lineplot(data=frame, x="step", y=f"overlap_{key}", hue="noise", ax=ax, legend=False)
        sns.lineplot(data=frame, x="step", y=f"chance_{key}", hue="noise", ax=ax, legend=False,
                     linestyle=":")  # fmt: skip
        ax.set_title(f"overlap: {name}'s initial negative eigenspace\nand {weight}'s collapsed "
                     "directions", fontsize=8)  # fmt: skip
        ax.set_ylabel("mean cos² of principal angles (dotted: chance)", fontsize=8)
        ax.set_ylim(-0.05, 1.05)
    legend = axes[0].get_legend()
    if legend is not None:  # beside the panels, not over the first one's lines
        handles, labels = axes[0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(title)
    fig.text(0.01, 0.01, textwrap.fill(note, int(fig.get_figwidth() * 13)), fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.07, 0.92, 1))
    plt.close(fig)
    return fig


def metric_vs_accuracy_figure(
    runs: pd.DataFrame,
    metric: str,
    accuracy: str,
    title: str,
    hue: str = "method",
    labels: dict[str, str] | None = None,
    annotate: str | None = None,
) -> plt.Figure:
    """One point per run: a label-free ``metric`` against ``accuracy``, coloured by ``hue``
    (legend entries renamed by ``labels``), each point marked with its ``annotate`` value
    where that column exists and is set."""
    frame = runs.dropna(subset=[metric, accuracy]).copy()
    frame[hue] = frame[hue].astype(str).map(lambda value: (labels or {}).get(value, value))
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    sns.scatterplot(data=frame, x=metric, y=accuracy, hue=hue, style=hue, s=60, ax=ax)
    if annotate is not None and annotate in frame:
        for _, row in frame.dropna(subset=[annotate]).iterrows():
            ax.annotate(f"{row[annotate]:g}", (row[metric], row[accuracy]), fontsize=7,
                        color="0.3", xytext=(4, 3), textcoords="offset points")  # fmt: skip
    if ax.get_legend() is not None:
        sns.move_legend(ax, "best", fontsize=7, title_fontsize=8)
    ax.set_title(title, fontsize=9)
    note = f"one point per run and seed (n = {len(frame)})"
    if annotate is not None and annotate in frame:
        note += f"; marks: {annotate}"
    return _finish(fig, ax, note)
