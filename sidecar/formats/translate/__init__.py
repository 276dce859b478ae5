"""Translation between the three request formats: OpenAI Chat Completions ("chat"), OpenAI Responses
("responses") and Anthropic Messages ("messages").

Owns: the neutral model every format is read into and written from (ir.py); each format's requests
(chat.py, messages.py, responses.py), whole answers (answers.py) and streams, one incremental state machine
per direction (stream_chat.py, stream_messages.py, stream_responses.py); tool-call ids and the marks on reasoning
(ids.py) and signed reasoning kept from the wrong node (signed.py); errors in the client's format (errors.py);
the estimate of a count (count.py); and the pairing of a client format with a node's (pair.py). A request a
target cannot honour raises `ir.Untranslatable` where it is read or written.
Pure: no I/O; imports only the formats package around it.
"""
