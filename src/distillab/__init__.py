"""distillab: knowledge distillation that reproduces the published methods, runs fast, and stays hackable."""

__version__ = "0.1.0"
