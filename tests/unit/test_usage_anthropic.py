"""Token counts of Anthropic Messages responses (``/v1/messages``): a streamed message states its
input tokens (and cache reads) in ``message_start`` and its output tokens in ``message_delta``;
both must be kept, whichever way the stream is cut."""

from __future__ import annotations

from infergate.requestcontrol.usage import SSEUsageParser, usage_from_json

# the event sequence of a streamed Messages answer (event and field names as the API sends them)
STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"content":[],"model":"m","stop_reason":null,"usage":{"input_tokens":25,'
    b'"cache_read_input_tokens":16,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)


def test_a_streamed_message_keeps_its_input_and_output_tokens_at_every_cut() -> None:
    for cut in range(len(STREAM) + 1):
        parser = SSEUsageParser()
        parser.feed(STREAM[:cut])
        parser.feed(STREAM[cut:])
        parser.close()
        usage = parser.usage
        assert usage is not None, cut
        assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (25, 15, 16), cut


def test_a_whole_message_and_an_openai_stream_read_as_before() -> None:
    whole = (
        b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hi"}],'
        b'"usage":{"input_tokens":25,"output_tokens":15}}'
    )
    usage = usage_from_json(whole)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (
        25,
        15,
        None,
    )
    # continuous usage chunks: every chunk holds every count, the last one wins
    parser = SSEUsageParser()
    parser.feed(
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    )
    parser.close()
    assert parser.usage is not None and (parser.usage.prompt_tokens, parser.usage.completion_tokens) == (7, 2)
