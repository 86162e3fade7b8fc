"""`nepactl ablate`: the paper's ablations at demo scale, as ordinary runs and evaluations.

Every (variant, seed) is a pretraining run `PREFIX-VARIANT-sSEED`, rendered from the tiny
recipe plus the variant's overrides (templates/ablations.yaml), so all variants share one
budget. Each is evaluated through `nepactl.evaluate` (linear probe, fine-tune; the baseline
also at random initialisation). Locally the jobs run one after the other; on SLURM the
pretraining runs are one job array and the evaluations wait for their run (afterok).
Whatever is done is skipped, so a re-run only gathers the table into RUNS/PREFIX-ablation/.

variants: the table of ablations; plan: the runs and their states; run: submitting and
following them; findings: the table's rows from what the jobs recorded; plots: loss curves.
"""
