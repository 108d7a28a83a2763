"""Training with Lightning: config (dataclasses + YAML), module, datamodule, callbacks, metrics, runs.

Entry points: :func:`covfuse.training.run.fit_run` (one named run end to end),
:func:`covfuse.training.run.evaluate_run` (`covfuse test`), :func:`covfuse.training.predict.predict_rows`
(`covfuse predict`, every source).
Nothing is imported here, so `covfuse fit --help` does not pay for importing Lightning.
"""
