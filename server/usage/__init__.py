"""Usage after the decision: the batched usage writer, experiment analysis, alerts."""
