"""nepa.config: strict conversion of YAML values into the frozen config dataclasses."""

from __future__ import annotations

import pytest
import yaml

from nepa.config import ConfigError, from_dict
from nepa.train.config import OptimConfig


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("2E-4", 2e-4), ("+5e0", 5.0), ("1.5e-3", 1.5e-3)])
def test_exponent_floats_that_yaml_reads_as_strings_are_numbers(text, value):
    raw = yaml.safe_load(f"blr: {text}")["blr"]
    assert from_dict(OptimConfig, {"blr": raw}).blr == pytest.approx(value)


@pytest.mark.parametrize("raw", ["fast", "1e", True, "1e-3x"])
def test_other_values_for_a_number_are_refused(raw):
    with pytest.raises(ConfigError, match="optim.blr: expected a number"):
        from_dict(OptimConfig, {"blr": raw}, path="optim")
