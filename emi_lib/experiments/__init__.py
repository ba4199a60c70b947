"""Experiments: the one layer that combines training with evaluation.

* :mod:`~emi_lib.experiments.ablation` -- notebook 03's arms, trained per seed and scored, and their inputs;
* :mod:`~emi_lib.experiments.ablation_stats` -- their statistics: seed+clip bootstrap tables, Holm-judged
  claims, the best variant by validation;
* :mod:`~emi_lib.experiments.robustness` -- the corruption sweep (regenerated test sets, trained models scored);
* :mod:`~emi_lib.experiments.explorer_model` -- which model notebook 04 explores.

The layers below never import this package (an import-linter contract run by the tests).
"""
