"""Studies across runs: sweeps, k-fold CV and Optuna searches (locally or as SLURM arrays), their status,
statistics (cluster-bootstrap CIs, paired tests), reports, the demo, and explaining a trained run (explain/)."""
