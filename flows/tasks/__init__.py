"""The Prefect tasks the flows call: store I/O, the ingest job, validation, notifications, artifacts."""
