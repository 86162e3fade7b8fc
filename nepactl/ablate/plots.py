"""The ablation's loss curves: every run, one colour per variant."""

from __future__ import annotations

from pathlib import Path

from nepa import rundir
from nepactl.ablate.plan import AblationPlan


def plot_losses(plan: AblationPlan, out: Path) -> Path | None:
    """Loss curves of all runs, from each run's metrics.jsonl; None when no run has metrics."""
    from nepactl.results import pyplot

    curves = []
    for member in plan.members:
        records = [r for r in rundir.read_jsonl(plan.root / member.name / rundir.METRICS) if "loss" in r]
        if records:
            curves.append((member.variant, [r["step"] for r in records], [r["loss"] for r in records]))
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {v: f"C{i % 10}" for i, v in enumerate(plan.variants)}
    seen = set()
    for variant, steps, losses in curves:
        ax.plot(steps, losses, lw=1, color=colours[variant], alpha=0.8,
                label=None if variant in seen else variant)
        seen.add(variant)
    ax.set(xlabel="step", ylabel="NEPA loss (-cosine)", title=f"{plan.prefix}: pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
