"""Integrations (LangChain, LiteLLM, OpenAI-compatible proxy), built on MemCache's public API only."""
