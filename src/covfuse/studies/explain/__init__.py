"""What each covariate changes in a trained model: counterfactual scoring, attribution maps, layer summaries."""
from covfuse.studies.explain.runner import explain_run

__all__ = ["explain_run"]
