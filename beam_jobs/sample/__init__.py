"""The sample world: a generated, time-evolving website, and a small HTTP server for it."""

from beam_jobs.sample.world import Edition, FactChange, Page, SampleWorld, fact_prompt, fact_sentence

__all__ = ["Edition", "FactChange", "Page", "SampleWorld", "fact_prompt", "fact_sentence"]
