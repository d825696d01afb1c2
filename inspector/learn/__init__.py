"""Learning a detector: data sets, pseudo-anomalies, the training engine, metrics."""
