"""Fake providers that fail in every way a real one does: for tests, the demo and users' own trials.

Owns: what every format's fake shares (core.py: behaviour, stats, fault tables; base.py: the flow from a request
to its answer or fault; plan.py and tools.py: what an answer holds, tool calls made from the request's schemas;
stream.py: sending and breaking an answer), OpenAI's API (openai.py over chat.py, responses.py with
responses_wire.py, embeddings.py), Anthropic's (anthropic.py over messages.py), and running one (serve.py).
Imports only formats: a fake knows nothing of the sidecar in front of it.
"""
