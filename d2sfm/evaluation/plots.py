"""Benchmark figures as PNG (matplotlib is an optional extra: ``pip install -e ".[plots]"``); each figure is
written next to the JSON of its numbers by the command that computed them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from d2sfm.evaluation.mma import groups_of
from d2sfm.io.atomic import atomic_path

PLOTS_HINT = 'matplotlib is not installed, so no figures were drawn (pip install -e ".[plots]")'


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(figure, path: Path) -> None:
    with atomic_path(path) as scratch:
        figure.savefig(scratch, format="png", dpi=120, bbox_inches="tight")


def plot_mma(results: dict[str, dict], path: Path, title: str = "") -> bool:
    """The paper's Figure: MMA against the threshold, one panel per group (overall, then each split), one curve
    per method. Returns False (and draws nothing) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    groups = list(dict.fromkeys(g for summary in results.values() for g in groups_of(summary)))
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4), sharey=True, squeeze=False)
    styles = ("-", "--", "-.", ":")  # methods that coincide (SIFT and RootSIFT often do) stay visible
    for axis, group in zip(axes[0], groups):
        for index, (method, summary) in enumerate(results.items()):
            if group in summary:
                axis.plot(summary["thresholds"], summary[group]["mma"], marker="o", markersize=3, linewidth=2,
                          linestyle=styles[index % len(styles)], color=f"C{index}", label=method)
        count = next(s[group]["sequences"] for s in results.values() if group in s)
        axis.set(title=f"{group} ({count} seq.)", xlabel="threshold [px]", ylim=(0, 1))
        axis.set_xticks(list(next(iter(results.values()))["thresholds"]))
        axis.grid(alpha=0.4)
    axes[0][0].set_ylabel("MMA")
    axes[0][0].legend(loc="lower right", fontsize=8)
    if title:
        figure.suptitle(title)
    _save(figure, path)
    plt.close(figure)
    return True


def plot_counts(results: dict[str, dict], path: Path, groups: Sequence[str] = ("overall",)) -> bool:
    """Bar charts of mean features per image and mutual matches per pair for each method."""
    plt = _pyplot()
    if plt is None:
        return False
    methods = list(results)
    figure, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(methods) + 3), 3.6))
    for axis, key, title in zip(axes, ("features_per_image", "matches_per_pair"),
                                ("features per image", "mutual matches per pair")):
        values = [results[m][groups[0]][key] for m in methods]
        bars = axis.bar(range(len(methods)), values, color=[f"C{i}" for i in range(len(methods))])
        axis.bar_label(bars, fmt="%.0f", fontsize=8)
        axis.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.4)
    _save(figure, path)
    plt.close(figure)
    return True


def plot_error_curves(errors: dict[str, list[float]], path: Path, title: str = "", limit_deg: float = 10.0) -> bool:
    """Share of image pairs whose relative-pose error (degrees) is below each threshold, one curve per method
    (the curve whose area the pose AUC is)."""
    plt = _pyplot()
    if plt is None:
        return False
    import numpy as np

    figure, axis = plt.subplots(figsize=(5.5, 4))
    thresholds = np.linspace(0, limit_deg, 401)
    for index, (method, values) in enumerate(errors.items()):
        values = np.sort(np.asarray(values, dtype=np.float64))
        share = np.searchsorted(values, thresholds, side="right") / max(len(values), 1)
        axis.plot(thresholds, share, linewidth=2, color=f"C{index}", linestyle=("-", "--", "-.", ":")[index % 4],
                  label=method)
    axis.set(xlabel="relative pose error [deg] (max of rotation and translation direction)",
             ylabel="share of image pairs", ylim=(0, 1.02), xlim=(0, limit_deg), title=title)
    axis.grid(alpha=0.4)
    axis.legend(loc="lower right", fontsize=8)
    _save(figure, path)
    plt.close(figure)
    return True
