"""tgw test suite."""
