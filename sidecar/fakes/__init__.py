"""Fake providers that fail in every way a real one does: for tests, the demo and users' own trials.

Owns: what every format's fake shares (core.py), OpenAI's API (openai.py), Anthropic's (anthropic.py),
and running one (serve.py). Imports only formats: a fake knows nothing of the sidecar in front of it.
"""
