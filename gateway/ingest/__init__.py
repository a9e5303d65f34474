"""Ingest: broker -> validate -> batch -> COPY -> commit -> acknowledge."""
