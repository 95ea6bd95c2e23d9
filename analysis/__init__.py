"""Weight statistics, PAC-Bayes flatness, robust generalization gap and correlations."""
