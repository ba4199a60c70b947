"""Evaluation: the challenge metric, probes and the submission writer."""

from emi_lib.eval.metrics import ConstantColumnWarning, challenge_score, score_table

__all__ = ["ConstantColumnWarning", "challenge_score", "score_table"]
