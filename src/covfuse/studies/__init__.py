"""Studies across runs: statistics (bootstrap CIs, paired tests), reports, the demo."""
