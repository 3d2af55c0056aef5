"""Figures that are more drawing than data: Figure 1, the two-stage architecture (book: ``chapters/02_two_stage``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["architecture_diagram"]


def _box(ax, xy, w, h, text, color):
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.03", fc=color, ec="black", lw=1.2))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=9)


def _arrow(ax, a, b, text="", style="-|>", rad=0.0, color="black"):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=14, lw=1.3, color=color,
                                 connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.04, text, ha="center", va="bottom", fontsize=8, color=color)


def architecture_diagram():
    """Figure 1: the context circuit sets the gate g, which biases every memory's logit in the retrieval circuit;
    the retrieval distribution p feeds back into the gate (the second-order loop)."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    _box(ax, (0.02, 0.62), 0.16, 0.22, "context $c$", "#e8eef7")
    _box(ax, (0.26, 0.62), 0.2, 0.22, "context evidence\n$s_c = K^\\top c$", "#e8eef7")
    _box(ax, (0.54, 0.62), 0.2, 0.22, "gate\n$g = G_\\alpha(s_c + \\lambda p)$\n(sparsemax)", "#fbe3c8")
    _box(ax, (0.02, 0.12), 0.16, 0.22, "query $\\xi$", "#e6f2e6")
    _box(ax, (0.26, 0.12), 0.2, 0.22, "query evidence\n$s_q = X^\\top \\xi$", "#e6f2e6")
    _box(ax, (0.54, 0.12), 0.2, 0.22, "retrieval\n$p = \\mathrm{softmax}(\\beta(s_q + \\lambda g))$", "#fbe3c8")
    _box(ax, (0.82, 0.12), 0.16, 0.22, "recall\n$\\xi^+ = X p$", "#e6f2e6")
    _arrow(ax, (0.18, 0.73), (0.26, 0.73))
    _arrow(ax, (0.46, 0.73), (0.54, 0.73))
    _arrow(ax, (0.18, 0.23), (0.26, 0.23))
    _arrow(ax, (0.46, 0.23), (0.54, 0.23))
    _arrow(ax, (0.74, 0.23), (0.82, 0.23))
    _arrow(ax, (0.62, 0.62), (0.62, 0.34), "$+\\lambda g$ (direct bias)", color="#b35900")
    _arrow(ax, (0.68, 0.34), (0.68, 0.62), "", color="#1f4e99")
    ax.text(0.695, 0.48, "$+\\lambda p$\n(feedback)", fontsize=8, color="#1f4e99", va="center")
    ax.text(0.13, 0.93, "context circuit (stage 1)", fontsize=10, weight="bold")
    ax.text(0.13, 0.02, "retrieval circuit (stage 2, modern Hopfield)", fontsize=10, weight="bold")
    fig.tight_layout()
    return fig
