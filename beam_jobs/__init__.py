"""retrofresh: beam_jobs."""
