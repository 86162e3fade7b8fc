"""nepactl: the command line for NEPA runs (render, submit, track, resume, evaluate)."""
