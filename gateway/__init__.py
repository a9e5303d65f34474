"""tgw gateway: ingest, storage, commands, API and console."""
