"""retrofresh: model."""
