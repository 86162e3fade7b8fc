"""Evaluations of pretrained NEPA models."""
