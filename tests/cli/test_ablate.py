"""`nepactl ablate`: the variant table, the paper's qualitative findings on real short runs
(collapse without stop-gradient, pretrained probe beats random init), --retry-failed and bad
input. The SLURM job array runs on the loopback cluster: tests/slurm/test_nepactl.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nepa.config import to_dict
from nepactl.commands.ablate import ablate
from nepactl.submit import fresh_array_dir

app = typer.Typer()
app.command("ablate")(ablate)
app.command("unused")(lambda: None)  # two commands: typer keeps the subcommand name
runner = CliRunner()

# The cheapest budget that passed reliably (see the measurements in the report): a 2-block,
# 64-wide tiny NEPA, batch 32, 250 steps (~30 s per run on a busy 2-core CPU).
SMALL = ["--set", "model.depth=2", "--set", "model.dim=64", "--set", "model.num_heads=2",
         "--set", "model.mlp_dim=256", "--set", "train.global_batch=32", "--set", "train.micro_batch=32"]
PROBE = ["--tasks", "linprobe", "--set", "linprobe.features=[mean]"]
STEPS = 250


def _ablate(root: Path, *args: str):
    return runner.invoke(app, ["ablate", "--cluster", "debug", "--runs-root", str(root), *args])


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_each_variant_changes_exactly_its_switch(tmp_path):
    from nepactl.ablate.plan import plan_ablation
    from nepactl.ablate.variants import load_variants

    root = tmp_path / "runs"
    plan = plan_ablation(prefix="t", root=root, variants="all", seeds=(3,), steps=50, cluster="local")
    assert tuple(plan.variants) == tuple(load_variants())
    runs = {m.variant: _flat(to_dict(m.rendered.run)) for m in plan.members}
    base = runs["baseline"]
    assert base["objective.shift"] and base["objective.stop_grad"] and base["model.causal"]
    assert base["model.mask_ratio"] == 0.0 and base["model.patch_order"] == "raster"
    assert base["train.max_steps"] == 50 and base["train.seed"] == 3 and base["data.source"] == "digits"
    assert base["model.dim"] == 128  # the tiny recipe
    expected = {
        "no-stopgrad": {"objective.stop_grad": False}, "no-shift": {"objective.shift": False},
        "bidirectional": {"model.causal": False}, "mask40": {"model.mask_ratio": 0.4},
        "mask60": {"model.mask_ratio": 0.6}, "order-hilbert": {"model.patch_order": "hilbert"},
        "order-spiral": {"model.patch_order": "spiral"}, "order-random": {"model.patch_order": "random"},
    }
    for variant, switches in expected.items():
        diff = {k: v for k, v in runs[variant].items() if v != base[k] and k != "name"}
        assert diff == switches, variant
        assert runs[variant]["name"] == f"t-{variant}-s3"
    assert all(m.state == "new" for m in plan.members) and not root.exists()  # nothing created


def test_a_broken_variant_table_names_the_file_and_key(tmp_path):
    import shutil

    from nepa.config import ConfigError
    from nepactl.ablate.variants import load_variants
    from nepactl.render import TEMPLATES

    shutil.copytree(TEMPLATES, tmp_path / "templates")
    table = tmp_path / "templates" / "ablations.yaml"
    table.write_text("variants:\n  baseline: {description: x}\n  bad: {description: y, sets: [model.dept=2]}\n")
    with pytest.raises(ConfigError, match=r"model.dept \(in .*ablations.yaml \(variants.bad\)\): unknown key "
                                          r"\(did you mean 'depth'\?\)"):
        load_variants(tmp_path / "templates")
    table.write_text("variants:\n  baseline: {descripton: x}\n")
    with pytest.raises(ConfigError, match="did you mean 'description'"):
        load_variants(tmp_path / "templates")


def test_unknown_variant_is_one_line_and_creates_nothing(tmp_path):
    root = tmp_path / "runs"
    result = _ablate(root, "--variants", "baseline,no-stopgard")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "unknown variant 'no-stopgard' (did you mean 'no-stopgrad'?)" in result.output
    assert not root.exists()


def test_arrays_submitted_within_one_second_get_their_own_directories(tmp_path):
    # a --retry-failed right after the first array once collided on the timestamped directory
    made = [fresh_array_dir(tmp_path / "arrays") for _ in range(3)]
    assert len(set(made)) == 3 and all(d.is_dir() and not any(d.iterdir()) for d in made)


@pytest.fixture(scope="module")
def findings(tmp_path_factory, train_precision):
    """Real pretraining through the ablate path: baseline x 3 seeds (+ random init), no-stopgrad."""
    import torch

    root = tmp_path_factory.mktemp("ablate") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the debug profile trains in-process; 64-wide matmuls gain nothing from 2
    try:
        rows = _findings_runs(root, *_precision(train_precision))
    finally:
        torch.set_num_threads(threads)
    return root, rows


def _rows(root: Path) -> list[dict]:
    """The rows of the last call (stdout also holds the debug jobs' attempt markers)."""
    return json.loads((root / "f-ablation" / "summary.json").read_text())["rows"]


def _precision(train_precision: str) -> list[str]:
    return ["--set", f"train.precision={train_precision}"]


def _findings_runs(root: Path, *sets: str) -> dict[str, dict]:
    first = _ablate(root, "--variants", "baseline", "--seeds", "0,1,2", "--steps", str(STEPS), *SMALL, *PROBE,
                    *sets, "--name", "f", "--format", "json")
    assert first.exit_code == 0, first.output
    rows = _rows(root)
    second = _ablate(root, "--variants", "no-stopgrad", "--seeds", "0", "--steps", str(STEPS), *SMALL, *PROBE,
                     *sets, "--name", "f", "--format", "json")
    assert second.exit_code == 0, second.output
    return {r["variant"]: r for r in rows + _rows(root)}


def test_no_stopgrad_collapses(findings):
    _, rows = findings
    collapsed, base = rows["no-stopgrad"], rows["baseline"]
    print(f"no-stopgrad loss {collapsed['loss']:.4f} spread {collapsed['spread']:.4f}; "
          f"baseline loss {base['loss']:.4f} spread {base['spread']:.4f}")
    assert collapsed["loss"] < -0.95
    assert collapsed["spread"] < 0.5 * base["spread"]
    assert base["loss"] > -0.9


def test_pretrained_probe_beats_random_init_over_three_seeds(findings):
    root, rows = findings
    base, random = rows["baseline"], rows["random-init"]
    assert base["runs"] == "3/3" and base["probe_mean_n"] == 3 and random["probe_mean_n"] == 3
    print(f"probe (mean of patch tokens): baseline {base['probe_mean']:.1f} ± {base['probe_mean_std']:.1f}, "
          f"random init {random['probe_mean']:.1f} ± {random['probe_mean_std']:.1f}")
    assert base["probe_mean"] - random["probe_mean"] >= 10
    summary = json.loads((root / "f-ablation" / "summary.json").read_text())
    assert [m["run"] for m in summary["members"]] == ["f-no-stopgrad-s0"]  # the last call's plan
    _assert_drawn(root / "f-ablation" / "loss_curves.png")


def test_rerun_skips_what_is_done(findings, train_precision):
    root, _ = findings
    ledger = (root / "f-baseline-s0" / "ledger.jsonl").read_text()
    again = _ablate(root, "--variants", "baseline", "--seeds", "0", "--steps", str(STEPS), *SMALL, *PROBE,
                    *_precision(train_precision), "--name", "f", "--format", "md")
    assert again.exit_code == 0, again.output
    assert "| baseline | 1/1 |" in again.output and "| random-init |" in again.output
    assert (root / "f-baseline-s0" / "ledger.jsonl").read_text() == ledger  # nothing resubmitted
    changed = _ablate(root, "--variants", "baseline", "--seeds", "0", "--steps", "7", *SMALL, "--name", "f")
    assert changed.exit_code == 2 and "exists with another config" in changed.output


TINY = ["--set", "model.depth=1", "--set", "train.global_batch=32", "--set", "train.micro_batch=32",
        "--set", "checkpoint.every_steps=2", "--set", "linprobe.epochs=2", "--set", "linprobe.lr_grid=[0.1]",
        "--tasks", "linprobe", "--steps", "4", "--name", "r"]


def _crash_after_step_2(run_dir: Path) -> None:
    """What a job that died after its step-2 checkpoint leaves: no outcome, no end event,
    metrics up to step 2, checkpoints up to step 2 (and no evaluations yet)."""
    import shutil

    (run_dir / "outcome.json").unlink()
    (run_dir / "checkpoints" / "step_00000004.pt").unlink()
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line)["step"] <= 2))
    ledger = run_dir / "ledger.jsonl"
    ledger.write_text("".join(line + "\n" for line in ledger.read_text().splitlines()
                              if json.loads(line)["event"] in ("submit", "start")))
    shutil.rmtree(run_dir / "evals")


def test_retry_failed_resumes_only_the_failed_member(tmp_path):
    root = tmp_path / "runs"
    first = _ablate(root, "--variants", "baseline,no-shift", "--seeds", "0", *TINY)
    assert first.exit_code == 0, first.output
    _crash_after_step_2(root / "r-no-shift-s0")
    kept = (root / "r-baseline-s0" / "ledger.jsonl").read_text()

    plain = _ablate(root, "--variants", "baseline,no-shift", "--seeds", "0", *TINY, "--format", "json")
    assert plain.exit_code == 0, plain.output
    assert "r-no-shift-s0; resume them with --retry-failed" in plain.output
    ledger = [json.loads(x) for x in (root / "r-no-shift-s0" / "ledger.jsonl").read_text().splitlines()]
    assert [e["event"] for e in ledger].count("submit") == 1  # not resubmitted without the flag

    retried = _ablate(root, "--variants", "baseline,no-shift", "--seeds", "0", *TINY, "--retry-failed")
    assert retried.exit_code == 0, retried.output
    run = root / "r-no-shift-s0"
    ledger = [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]
    assert [e.get("cause") for e in ledger if e["event"] == "submit"] == ["new run", "retry-failed"]
    assert json.loads((run / "outcome.json").read_text())["status"] == "COMPLETED"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # resumed from the step-2 checkpoint, not from scratch
    assert (run / "evals" / "linprobe-step4-seed0" / "result.json").is_file()
    assert (root / "r-baseline-s0" / "ledger.jsonl").read_text() == kept  # the completed one untouched


def _assert_drawn(path):
    """A real plot: a sensible size and a good share of pixels that are not the background."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        assert image.width >= 400 and image.height >= 250, image.size
        pixels = np.asarray(image.convert("L"))
    drawn = (pixels < 250).mean()  # ink: axes, labels, one curve per run
    assert 0.01 < drawn < 0.6, drawn
