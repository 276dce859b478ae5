"""A request's input tokens, estimated, for a count endpoint no node of the client's format is there to
answer (Anthropic's /v1/messages/count_tokens, OpenAI's /v1/responses/input_tokens): about four characters a
token of text, tool definitions and arguments included, and a fixed count per image and per document page's
worth of bytes. An estimate, said so in the answer's header; a node's own count is exact."""

from __future__ import annotations

import json
import math

from .ir import Document, Image, Request, Text, Thinking, ToolCall, ToolResult

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 1600  # Anthropic's figure for an image of about a megapixel
DOCUMENT_BYTES_PER_TOKEN = 40  # a PDF page of ~60 KB is ~1,500 tokens


def _document(part: Document) -> float:
    if part.text is not None:
        return len(part.text) / CHARS_PER_TOKEN
    return len(part.data or "") * 3 / 4 / DOCUMENT_BYTES_PER_TOKEN


def estimate(request: Request) -> int:
    tokens = len(request.system or "") / CHARS_PER_TOKEN
    for tool in request.tools:
        tokens += (len(tool.name) + len(tool.description or "") + len(json.dumps(tool.schema))) / CHARS_PER_TOKEN
    for message in request.messages:
        for part in message.parts:
            pieces = part.content if isinstance(part, ToolResult) else [part]
            for piece in pieces:
                if isinstance(piece, Text | Thinking):
                    tokens += len(piece.text) / CHARS_PER_TOKEN
                elif isinstance(piece, ToolCall):
                    tokens += (len(piece.name) + len(piece.arguments)) / CHARS_PER_TOKEN
                elif isinstance(piece, Image):
                    tokens += IMAGE_TOKENS
                elif isinstance(piece, Document):
                    tokens += _document(piece)
    return math.ceil(tokens)
