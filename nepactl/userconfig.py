"""The user's configuration file: the cluster profile and data default every command uses.

    $XDG_CONFIG_HOME/nepactl/config.yaml   (default ~/.config/nepactl/config.yaml)
    cluster: {executor: slurm, partition: gpu, gpus_per_node: 8, ...}   # `nepactl cluster init`
    data: {source: imagefolder, path: /data/imagenet}                  # for sizes S, B, L, H

Precedence of the profile: --cluster > $NEPA_CLUSTER > this file > the built-in `auto`;
of the data: --data > $NEPA_DATA > this file > the size template (tiny: the bundled digits).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from nepa.config import ConfigError, load_yaml, unknown_key

CLUSTER_ENV = "NEPA_CLUSTER"  # a profile name or a YAML file
DATA_ENV = "NEPA_DATA"  # a dataset directory (image folder, HF dataset or shards)
SECTIONS = ("cluster", "data")


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "nepactl" / "config.yaml"


def read() -> dict[str, Any]:
    """The file's sections ({} without a file); an unknown section is an error naming the file."""
    path = config_file()
    if not path.is_file():
        return {}
    try:
        data = load_yaml(path.read_text(), str(path)) or {}  # bounded, as every YAML we read
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)}); fix it or "
                          "write it again with: nepactl cluster init --force") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected the sections {', '.join(SECTIONS)}")
    for key in data:
        if key not in SECTIONS:
            raise unknown_key(key, key, SECTIONS, str(path))
    return data


def write(sections: dict[str, Any], header: str) -> Path:
    """Replace the named sections of the file (others are kept); atomic."""
    path = config_file()
    current = read() if path.exists() else {}
    current.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    text = "".join(f"# {line}\n" for line in header.splitlines())
    tmp.write_text(text + yaml.safe_dump(current, sort_keys=False))
    os.replace(tmp, path)
    return path
