"""What each API format is: OpenAI's and Anthropic's paths, errors and stream events.

Owns: which format a request is in and the differences between them (dialect.py), the sidecar's own
errors in the request's format (errors.py), server-sent events as the sidecar reads them (sse.py), and
translation between the formats (translate/).
Pure: imports nothing of the sidecar.
"""
