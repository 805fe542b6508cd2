"""Reproducible comparisons of the agents on seqgym tasks."""
