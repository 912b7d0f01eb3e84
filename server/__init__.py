"""OpenAI-compatible HTTP server (installed as phi4mm.server)."""
