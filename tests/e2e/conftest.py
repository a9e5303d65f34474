"""End-to-end fixtures: the integration tier's migrated databases, reused as they are."""

from tests.integration.conftest import migrated_database, migrated_templates

__all__ = ["migrated_database", "migrated_templates"]
