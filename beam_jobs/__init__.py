"""The Beam ingest job: configured sources -> one delta shard, ledger and tombstones in the store."""
