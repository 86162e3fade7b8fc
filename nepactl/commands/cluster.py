"""`nepactl cluster init|show`: the cluster profile every command uses, from the scheduler."""

from __future__ import annotations

from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Cluster
from nepactl.errors import handled

app = typer.Typer(help="Discover the cluster and keep your profile in ~/.config/nepactl/config.yaml.",
                  no_args_is_help=True)


@app.command("init")
@handled
def init(partition: Annotated[str | None, typer.Option(
             "--partition", "-p", help="Partition to use (default: the default one with GPUs, else "
                                       "the one with most GPUs per node).")] = None,
         data: Annotated[str | None, typer.Option(
             "--data", help="Also record your training data (image folder, HF dataset or shards).")] = None,
         force: Annotated[bool, typer.Option("--force", help="Replace an existing profile.")] = False,
         dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the proposal; write nothing.")]
         = False) -> None:
    """Ask the scheduler what it has and write a profile (and data default) for later commands.

    Example: nepactl cluster init --partition gpu --data /datasets/imagenet
    """
    import time

    import yaml

    from nepactl import discover, userconfig
    from nepactl.cluster import ClusterConfig
    from nepactl.errors import CliError
    from nepactl.render import data_section

    found = discover.partitions()
    accounts, qos = discover.associations()
    for p in found:
        console.hint(("* " if p.default else "  ") + p.describe())
    if accounts or qos:
        console.hint(f"accounts: {', '.join(accounts) or '-'}; QOS: {', '.join(qos) or '-'}")
    chosen = discover.choose(found, partition)
    profile = discover.propose(chosen, accounts)
    ClusterConfig(**profile)  # the proposal is a valid profile
    sections = {"cluster": profile}
    if data:
        sections["data"] = data_section(data)
    console.out.print(yaml.safe_dump(sections, sort_keys=False), markup=False, end="")
    if not chosen.gpus:
        console.warn(f"partition '{chosen.name}' reports no GPUs (sinfo %G): sizes S, B, L, H will be "
                     "refused until you set cluster.gpus_per_node, or cluster.device: cpu on purpose")
    if not chosen.usable:
        console.warn(f"partition '{chosen.name}' is {chosen.available} with nodes "
                     f"{'/'.join(chosen.node_states)}: jobs will wait")
    if dry_run:
        return
    path = userconfig.config_file()
    if "cluster" in userconfig.read() and not force:
        raise CliError(f"{path} already holds a cluster profile; pass --force to replace it")
    userconfig.write(sections, f"written by `nepactl cluster init` on {time.strftime('%Y-%m-%d %H:%M')} "
                               f"from sinfo (partition {chosen.name}); edit freely\n"
                               "fields: templates/clusters/slurm.yaml")
    console.hint(f"wrote {path}; check it with: nepactl doctor --probe")


@app.command("show")
@handled
def show(cluster: Cluster = None) -> None:
    """Print the cluster profile commands use, and where it comes from.

    Example: nepactl cluster show
    """
    import yaml

    from nepa.config import from_dict, to_dict
    from nepactl.cluster import ClusterConfig
    from nepactl.render import cluster_layer

    source, layer = cluster_layer(cluster)
    config = from_dict(ClusterConfig, layer.get("cluster") or {}, path="cluster", source=source)
    console.out.print(f"# from {source}", markup=False)
    console.out.print(yaml.safe_dump({"cluster": to_dict(config)}, sort_keys=False), markup=False, end="")
