"""What several flows, tasks and commands share: the lease, retries, inputs, change events, pending
changes, the refresh summary, the run log and the temporary Prefect API. A helper with one user
lives beside that user instead (``flows/_*.py``, ``flows/tasks/_*.py``)."""
