"""Evaluators, one module each: perplexity, KL divergence to a reference, lm-eval zero-shot accuracy, block
spectra after pruning, and the shipped local task. ``optimum_alpha.evaluate`` re-exports the public functions."""
