"""The data pipeline: the DVC stages (per-batch splits, the replay sample), the data version, the real stream."""
