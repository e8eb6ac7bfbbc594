"""The benchmarks' own HTTP client survives connections the server closes (uvicorn closes a
kept-alive connection idle for 5 s, as the benchmarks' are while they prepare large bodies)."""

import asyncio

from bench.harness import KeepAliveClient

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_request(reader: asyncio.StreamReader) -> None:
    header = await reader.readuntil(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in header.split(b"\r\n")[1:] if line)
    await reader.readexactly(int(fields.get(b"content-length", b"0")))


async def test_the_benchmark_client_opens_a_new_connection_when_the_server_closed_one() -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()
        writer.close()  # without `Connection: close`, as an idle timeout does

    server = await asyncio.start_server(answer_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, KeepAliveClient(f"http://127.0.0.1:{port}", 1) as client:
        answers = [await client.request("GET", "/") for _ in range(3)]
        answers.append(await client.request("POST", "/", b"x" * 2_000_000, "image/jpeg"))

    assert answers == [(200, b"ok")] * 4


async def test_the_benchmark_client_sends_again_when_the_server_closes_as_the_request_comes() -> (
    None
):
    async def close_on_the_second_request(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()
        await read_request(reader)
        writer.close()  # the request arrived as the connection timed out: never answered

    server = await asyncio.start_server(close_on_the_second_request, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, KeepAliveClient(f"http://127.0.0.1:{port}", 1) as client:
        answers = [await client.request("GET", "/") for _ in range(3)]

    assert answers == [(200, b"ok")] * 3
