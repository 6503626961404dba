"""The shapes-world benchmark: prompt suites, analytic prompt-adherence probes, FVD-shapes and the evaluation runs
behind ``vidiff eval``. The general metrics (FVD, FID, CLIPSIM, ...) are in :mod:`vidiff.metrics`."""
