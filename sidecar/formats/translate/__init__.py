"""Translation between the three request formats: OpenAI Chat Completions ("chat"), OpenAI Responses
("responses") and Anthropic Messages ("messages").

Owns: the neutral model every format is read into and written from (ir.py); each format's requests
(chat.py, messages.py, responses.py), whole answers (answers.py) and streams, one incremental state machine
per direction (stream_chat.py, stream_messages.py, stream_responses.py); tool-call ids and provider-bound
state across providers (ids.py); what a target cannot honour (limits.py); errors in the client's format
(errors.py); and the pairing of a client format with a node's (pair.py).
Pure: no I/O; imports only the formats package around it.
"""
