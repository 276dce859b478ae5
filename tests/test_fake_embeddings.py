"""The OpenAI fake's embeddings (sidecar/fakes/embeddings.py), driven over loopback by the real openai SDK."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import openai
import pytest

from sidecar.fakes.core import estimate_tokens
from sidecar.fakes.embeddings import DIMENSIONS, vector

Fakes = Callable[..., Awaitable[Any]]  # the `fakes` fixture of conftest.py


@pytest.fixture
async def sdk(fakes: Fakes) -> AsyncIterator[tuple[Any, openai.AsyncOpenAI]]:
    fake = await fakes("e")
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=5) as client:
        yield fake, client


async def test_vectors_are_deterministic_unit_vectors_per_input(sdk: Any) -> None:
    fake, client = sdk
    answer = await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta", "alpha"])
    assert answer.object == "list" and answer.model == "text-embedding-3-small"
    assert [d.index for d in answer.data] == [0, 1, 2] and all(d.object == "embedding" for d in answer.data)
    first, second, third = (d.embedding for d in answer.data)
    assert len(first) == DIMENSIONS and first == third != second
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-5)
    assert first == vector("text-embedding-3-small", "alpha", DIMENSIONS)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3 * estimate_tokens("alpha")
    other = await client.embeddings.create(model="text-embedding-3-large", input="alpha")
    assert other.data[0].embedding != first  # the model is part of the seed
    assert fake.stats.embeddings == 2 and fake.stats.chat == 0


async def test_float_and_base64_carry_the_same_numbers(sdk: Any) -> None:
    fake, client = sdk
    # The SDK asks for base64 unless told, and decodes it; asked for floats it gets them as they are.
    decoded = await client.embeddings.create(model="m", input="same", dimensions=64)
    floats = await client.embeddings.create(model="m", input="same", dimensions=64, encoding_format="float")
    assert decoded.data[0].embedding == floats.data[0].embedding and len(floats.data[0].embedding) == 64
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(
            fake.url + "/v1/embeddings",
            json={"model": "m", "input": "same", "dimensions": 64, "encoding_format": "base64"},
        )
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert list(struct.unpack("<64f", raw)) == floats.data[0].embedding


async def test_token_id_inputs(sdk: Any) -> None:
    _, client = sdk
    one = await client.embeddings.create(model="m", input=[1, 2, 3])
    many = await client.embeddings.create(model="m", input=[[1, 2, 3], [4]])
    assert len(one.data) == 1 and len(many.data) == 2 and one.data[0].embedding == many.data[0].embedding


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": ""},
        {"model": "m", "input": []},
        {"model": "m", "input": [""]},
        {"model": "m", "input": [[]]},
        {"model": "m", "input": [1, "a"]},
        {"model": "m", "input": {"text": "a"}},
        {"model": "m"},
        {"model": "m", "input": "a", "encoding_format": "int8"},
        {"model": "m", "input": "a", "dimensions": 0},
        {"model": "m", "input": "a", "dimensions": 10**6},
        {"model": "m", "input": "a", "dimensions": True},
        {"model": "m", "input": ["a"] * 2049},
        {"input": "a"},
    ],
)
async def test_bad_requests_are_400s_naming_the_parameter(sdk: Any, body: dict[str, Any]) -> None:
    fake, _ = sdk
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(fake.url + "/v1/embeddings", json=body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert fake.stats.embeddings == 1


async def test_fault_models_and_fail_rate_apply(sdk: Any) -> None:
    fake, client = sdk
    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model="fault-429-once-e", input="a")
    assert len((await client.embeddings.create(model="fault-429-once-e", input="a")).data) == 1
    fake.set(fail_rate=1.0, fault="error", status=502)
    with pytest.raises(openai.InternalServerError) as failed:
        await client.embeddings.create(model="m", input="a")
    assert failed.value.status_code == 502
