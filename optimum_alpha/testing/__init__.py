"""Testing helpers that tests and benchmarks share (like ``transformers.testing_utils``): tiny random models
of every supported decoder family. Importing it needs torch and transformers, nothing else."""
