"""Imitation agents for seqgym environments (SequenceMatch, MLE, BC) behind one SB3-shaped interface."""
