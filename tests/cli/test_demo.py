"""`nepactl demo --precision bf16`: its own run, trained under CPU bf16 autocast, next to the
fp32 demo (the full demo with its evaluations takes minutes: README and benchmarks/README.md)."""

from __future__ import annotations

from nepa.runconfig import load_run_config
from nepactl.demo import demo_name, pretrain_demo
from nepactl.runs import read_json


def test_bf16_demo_is_its_own_run_and_pretrains_under_autocast(tmp_path):
    assert demo_name("fp32") == "demo" and demo_name("bf16") == "demo-bf16"
    run_dir = pretrain_demo(tmp_path, steps=2, fresh=False, precision="bf16")
    assert run_dir == tmp_path / "demo-bf16" and not (tmp_path / "demo").exists()
    assert load_run_config(run_dir).train.precision == "bf16"
    assert read_json(run_dir / "outcome.json")["status"] == "COMPLETED"
    logs = "".join(p.read_text() for p in (run_dir / "submitit").glob("*_log.err"))
    assert "precision=bf16" in logs, logs[-2000:]
