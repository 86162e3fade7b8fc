"""The command surface is frozen: adding or renaming a command or flag must change this test."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from nepactl.app import app
from nepactl.commands.control import split_attempts

SURFACE = {
    "pretrain": ["--cluster", "--config", "--data", "--dry-run", "--evals", "--format", "--gpus-per-node", "--name",
                 "--nodes", "--runs-root", "--set", "--size"],
    "render": ["--cluster", "--config", "--data", "--gpus-per-node", "--name", "--nodes", "--runs-root",
               "--set", "--size"],
    "status": ["--format", "--json", "--runs-root", "--watch", "RUN"],
    "runs": ["--format", "--json", "--runs-root"],
    "logs": ["--attempt", "--follow", "--rank", "--runs-root", "RUN"],
    "cancel": ["--runs-root", "RUN"],
    "resume": ["--max-preemptions", "--max-timeouts", "--runs-root", "RUN"],
    "doctor": ["--cluster", "--config", "--data", "--gpus-per-node", "--nodes", "--probe", "--runs-root",
               "--set", "--size"],
    "cluster init": ["--data", "--dry-run", "--force", "--partition"],
    "cluster show": ["--cluster"],
    "convert": ["--ema", "--to-hf", "OUT", "SRC"],
    "demo": ["--fresh", "--precision", "--quick", "--runs-root", "--steps"],
    "data pack": ["--decode", "--seed", "--shard-size", "--shuffle", "--source", "OUT", "SRC"],
    "data check": ["--decode", "--json", "--sample", "--source", "--train-split", "--val-split", "PATH"],
    "viz": ["--heads", "--image", "--layers", "--out", "--query", "--query-grid", "--runs-root", "--weights", "RUN"],
    "eval": ["--cluster", "--config", "--dry-run", "--format", "--name", "--random-init", "--runs-root", "--seeds",
             "--set", "--step", "--tasks", "--weights", "RUN"],
    "results": ["--format", "--plots", "--runs-root", "RUN"],
    "ablate": ["--cluster", "--format", "--name", "--retry-failed", "--runs-root", "--seeds", "--set", "--steps",
               "--tasks", "--variants"],
}


def _surface() -> dict[str, list[str]]:
    root = typer.main.get_command(app)
    found = {}

    def walk(group, prefix: str) -> None:
        for name, command in group.commands.items():
            full = f"{prefix}{name}"
            if hasattr(command, "commands"):
                walk(command, f"{full} ")
                continue
            names = []
            for param in command.params:
                if param.param_type_name == "argument":
                    names.append(param.name.upper())
                else:
                    names.append(max(param.opts, key=len))
            found[full] = sorted(n for n in names if n != "--help")

    walk(root, "")
    return found


def test_cli_surface_is_frozen():
    assert _surface() == SURFACE


@pytest.mark.parametrize("command", sorted(SURFACE))
def test_every_command_has_an_example(command):
    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_logs_are_split_per_attempt():
    text = ("=== nepactl attempt start (job 1, rank 0, pid 5, t) ===\nstep 1\n"
            "=== nepactl attempt start (job 1, rank 0, pid 9, t) ===\nresumed from x\n")
    first, second = split_attempts(text)
    assert "step 1" in first and "resumed" not in first and "resumed from x" in second
    assert split_attempts("") == [] and split_attempts("no marker\n") == ["no marker\n"]


def test_values_with_line_breaks_never_reach_the_sbatch_script():
    from nepa.config import ConfigError
    from nepactl.render import render

    with pytest.raises(ConfigError, match="cluster.partition: must be one printable line"):
        render(size="tiny", cluster="slurm", sets=('cluster.partition="gpu\\nrm -rf ~"',))


def test_version_and_shell_completion():
    from typer.testing import CliRunner

    from nepa import __version__
    from nepactl.app import app

    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip().endswith(__version__)
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="nepactl")
    assert script.exit_code == 0 and "complete" in script.output and "nepactl" in script.output
