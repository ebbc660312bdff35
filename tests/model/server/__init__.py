"""Tests of model/server (the RETRO HTTP server) and model/client."""
