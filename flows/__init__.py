"""retrofresh: flows."""
