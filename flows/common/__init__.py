"""What the flows and their tasks share: the lease, retries, inputs, change events, pending changes,
the refresh summary, Dataflow job following, and the sample world's evaluations."""
