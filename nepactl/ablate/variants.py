"""The ablations of templates/ablations.yaml: what each changes, strictly checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nepa.config import ConfigError, from_dict, parse_names, suggest
from nepactl.render import TEMPLATES, check_layer, parse_set, read_yaml

ABLATIONS_FILE = "ablations.yaml"
EVAL_SECTIONS = ("linprobe", "finetune")  # --set keys of the evaluations, not of pretraining
BASELINE = "baseline"


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One ablation: what it changes, as --set overrides of the pretraining run config."""

    description: str  # one line, shown in the table
    sets: tuple[str, ...] = ()  # KEY=VALUE, applied after the user's --set


def load_variants(templates: Path = TEMPLATES) -> dict[str, Variant]:
    """The variant table, strictly checked (keys, types, and every override's dotted key)."""
    path = templates / ABLATIONS_FILE
    data = read_yaml(path)
    for key in data:
        if key != "variants":
            raise ConfigError(f"{key} (in {path}): unknown key{suggest(str(key), {'variants'})}; "
                              "known keys: variants")
    table = {}
    for name, body in (data.get("variants") or {}).items():
        variant = from_dict(Variant, body or {}, path=f"variants.{name}", source=str(path))
        for assignment in variant.sets:
            check_layer(parse_set(assignment), f"{path} (variants.{name})")
        table[str(name)] = variant
    if BASELINE not in table:
        raise ConfigError(f"{path}: variants must include '{BASELINE}' (the row the others compare to)")
    return table


def select_variants(text: str, table: dict[str, Variant]) -> tuple[str, ...]:
    """'all' or a comma-separated list of known variant names, in the given order."""
    if text.strip() == "all":
        return tuple(table)
    return parse_names(text, tuple(table), flag="--variants", kind="variant",
                       example="baseline,no-stopgrad", extra=" (or all)")


def split_sets(sets: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(pretraining overrides, evaluation overrides); cluster.* goes to both."""
    run_sets, eval_sets = [], []
    for assignment in sets:
        section = assignment.split("=", 1)[0].strip().split(".", 1)[0]
        if section in EVAL_SECTIONS or section == "cluster":
            eval_sets.append(assignment)
        if section not in EVAL_SECTIONS:
            run_sets.append(assignment)
    return tuple(run_sets), tuple(eval_sets)
