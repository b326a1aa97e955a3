"""Scripts that must exist as files (entry points re-launched by Lightning)."""
