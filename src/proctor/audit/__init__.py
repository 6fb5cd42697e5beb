"""The audit log: signed events, a Merkle transparency log and its checkpoints."""
