"""The `nepactl` command: assembles the per-noun command modules. Imports no torch."""

from __future__ import annotations

import typer

from nepactl.commands import ablate, cluster, control, convert, data, demo, doctor, evaluate, pretrain, status, viz

app = typer.Typer(
    name="nepactl",
    help="Pretrain, evaluate and track NEPA Vision Transformers on SLURM or locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"nepactl {version('nepa')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            from nepa import __version__

            typer.echo(f"nepactl {__version__} (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Pretrain, evaluate and track NEPA Vision Transformers on SLURM or locally."""

app.command("pretrain")(pretrain.pretrain)
app.command("render")(pretrain.render)
app.command("eval")(evaluate.evaluate)
app.command("results")(evaluate.results)
app.command("status")(status.status)
app.command("runs")(status.runs)
app.command("logs")(control.logs)
app.command("cancel")(control.cancel)
app.command("resume")(control.resume)
app.command("doctor")(doctor.doctor)
app.command("convert")(convert.convert)
app.add_typer(data.app, name="data")
app.add_typer(cluster.app, name="cluster")
app.command("demo")(demo.demo)
app.command("viz")(viz.viz)
app.command("ablate")(ablate.ablate)


def main() -> None:
    app()
