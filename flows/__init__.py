"""retrofresh: flows.

The folder reads as the stack: the Prefect flows and the CLI commands that start them sit here
(refresh, refresh_changed, compact, rollback, gc, evaluate, evaluate_temporal, watch, demo,
deployments, cli); ``flows.tasks`` holds the tasks they call; ``flows.common`` holds what both
share (the lease, the retry policy, inputs, change events, pending changes, summaries).
"""
