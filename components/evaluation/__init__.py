"""Evaluation stage: held-out losses, the loss matrix and arm references (evaluate), the promotion decision (gate)."""

from components.evaluation.evaluate import Evaluation, evaluate_line, measure

__all__ = ["Evaluation", "evaluate_line", "measure"]
