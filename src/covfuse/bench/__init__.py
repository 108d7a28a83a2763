"""Benchmarks users can run (`covfuse bench`): ratios measured in one run, interleaved rounds,
median and spread, each printed as a table and kept as a JSON record. Never unit tests."""
