"""The wire format: channel grammar, ids, batch decoding, error strings, JSONP names."""

from __future__ import annotations

import pytest

from bayeux import ProtocolError
from bayeux import protocol as p

# -- channel grammar ---------------------------------------------------------------------------

VALID_CHANNELS = [
    "/a",
    "/a/b/c",
    "/meta/connect",
    "/service/echo",
    "/chat/room-1_2",
    "/marks/-_!~()$@",
    "/dotted/com.example.svc",
]
INVALID_CHANNELS = [
    "",
    "/",
    "a/b",
    "a",
    "/a/",
    "//a",
    "/a//b",
    "/a b",
    "/a/\u00e9",
    "/a\n",
    "/a/<script>",
    "/" + "x" * p.MAX_CHANNEL_LENGTH,
    "/a" * (p.MAX_SEGMENTS + 1),
]
WILDCARD_PATTERNS = ["/a/*", "/a/**", "/*", "/**", "/a/b/*"]
INVALID_WILDCARDS = [
    "/**/a",
    "/a/*/b",
    "/a*",
    "/a/b*",
    "/*a",
    "/a/***",
    "/a/**/b",
    "*",
    "/a/*/*",
    "/a/*\n",
]


@pytest.mark.parametrize("channel", VALID_CHANNELS)
def test_valid_channel_names_are_accepted(channel: str) -> None:
    assert p.is_valid_channel(channel)
    assert p.is_valid_channel(channel, allow_wildcards=True)


@pytest.mark.parametrize("channel", INVALID_CHANNELS)
def test_malformed_channel_names_are_rejected(channel: str) -> None:
    assert not p.is_valid_channel(channel)
    assert not p.is_valid_channel(channel, allow_wildcards=True)


@pytest.mark.parametrize("value", [None, 1, ["/a"], {"channel": "/a"}, b"/a"])
def test_non_string_channel_names_are_rejected(value: object) -> None:
    assert not p.is_valid_channel(value, allow_wildcards=True)


@pytest.mark.parametrize("pattern", WILDCARD_PATTERNS)
def test_trailing_wildcards_are_valid_patterns_but_not_channels(pattern: str) -> None:
    assert p.is_valid_channel(pattern, allow_wildcards=True)
    assert not p.is_valid_channel(pattern)
    assert p.is_wildcard(pattern)


@pytest.mark.parametrize("pattern", INVALID_WILDCARDS)
def test_wildcards_anywhere_but_the_last_whole_segment_are_invalid(pattern: str) -> None:
    assert not p.is_valid_channel(pattern, allow_wildcards=True)


def test_longest_channel_is_accepted_and_one_more_character_is_not() -> None:
    longest = "/" + "x" * (p.MAX_CHANNEL_LENGTH - 1)
    assert p.is_valid_channel(longest)
    assert not p.is_valid_channel(longest + "x")


@pytest.mark.parametrize(
    ("channel", "meta", "service"),
    [
        ("/meta/connect", True, False),
        ("/metadata", False, False),
        ("/service/echo", False, True),
        ("/service", False, True),
        ("/services/x", False, False),
        ("/chat/1", False, False),
    ],
)
def test_meta_and_service_channels_are_recognised_by_whole_segment(
    channel: str, meta: bool, service: bool
) -> None:
    assert p.is_meta(channel) is meta
    assert p.is_service(channel) is service


# -- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "abc-DEF_9", "a.b:c", "(x)!~$@", 0, 42, -7, "x" * 256])
def test_message_ids_may_be_tokens_or_integers(value: object) -> None:
    assert p.is_valid_id(value)


@pytest.mark.parametrize(
    "value",
    ["", "a b", "1\n", "x" * 257, "<id>", "a/b", "\u00e9", True, False, None, 1.5, [1], {"a": 1}],
)
def test_message_ids_reject_other_text_and_types(value: object) -> None:
    assert not p.is_valid_id(value)


@pytest.mark.parametrize("value", ["abc123", "A-b_C", "x" * 128])
def test_client_ids_are_alphanumeric_tokens(value: str) -> None:
    assert p.is_valid_client_id(value)


@pytest.mark.parametrize(
    "value", ["", "a.b", "a b", "abc\n", "x" * 129, "id;drop", 123, None, ["a"]]
)
def test_client_ids_reject_anything_else(value: object) -> None:
    assert not p.is_valid_client_id(value)


def test_new_ids_are_128_bit_hex_valid_client_ids_and_unique() -> None:
    ids = {p.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        assert len(value) == 32
        int(value, 16)
        assert p.is_valid_client_id(value)


# -- decode_batch ------------------------------------------------------------------------------


def test_decode_batch_accepts_an_array_of_objects() -> None:
    body = b'[{"channel":"/a","data":1},{"channel":"/b"}]'
    assert p.decode_batch(body, 10) == [{"channel": "/a", "data": 1}, {"channel": "/b"}]


def test_decode_batch_accepts_text_as_well_as_bytes() -> None:
    assert p.decode_batch('[{"channel":"/a"}]', 10) == [{"channel": "/a"}]


def test_decode_batch_wraps_a_bare_object_in_a_list() -> None:
    assert p.decode_batch(b'{"channel":"/a"}', 10) == [{"channel": "/a"}]


def test_decode_batch_accepts_exactly_max_messages() -> None:
    body = "[" + ",".join(['{"channel":"/a"}'] * 5) + "]"
    assert len(p.decode_batch(body, 5)) == 5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "at least one message"),
        (b'[{"channel":"/a"}, 1]', "JSON object"),
        (b'[{"channel":"/a"}, null]', "JSON object"),
        (b'[["/a"]]', "JSON object"),
        (b'"/meta/handshake"', "JSON array"),
        (b"42", "JSON array"),
        (b"null", "JSON array"),
        (b"", "not valid JSON"),
        (b"[{", "not valid JSON"),
        (b"{'channel': '/a'}", "not valid JSON"),
        (b'[{"channel":"/a"}] trailing', "not valid JSON"),
        (b"\xff\xfe[]", "not valid JSON"),
        (b"[NaN]", "not valid JSON"),
    ],
)
def test_decode_batch_rejects_what_is_not_a_batch(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        p.decode_batch(body, 10)


def test_decode_batch_rejects_more_than_max_messages() -> None:
    body = "[" + ",".join(['{"channel":"/a"}'] * 6) + "]"
    with pytest.raises(ProtocolError, match="too many messages"):
        p.decode_batch(body, 5)


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


# -- field checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"channel": "/a", "id": "1", "clientId": "abc"}, None),
        ({"data": 1}, p.CHANNEL_MISSING),
        ({"channel": None}, p.CHANNEL_MISSING),
        ({"channel": "a/b"}, p.CHANNEL_INVALID),
        ({"channel": 7}, p.CHANNEL_INVALID),
        ({"channel": "/a/*"}, p.CHANNEL_INVALID),
        ({"channel": "/a", "id": "bad id"}, p.MESSAGE_ID_INVALID),
        ({"channel": "/a", "id": None}, p.MESSAGE_ID_INVALID),
        ({"channel": "/a", "clientId": "no.dots"}, p.CLIENT_ID_INVALID),
        ({"channel": "/a", "clientId": 12}, p.CLIENT_ID_INVALID),
    ],
)
def test_check_fields_names_the_first_broken_field(
    message: p.Message, expected: str | None
) -> None:
    assert p.check_fields(message) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/a", ["/a"]),
        (["/a", "/b/*"], ["/a", "/b/*"]),
        ([], None),
        (["/a", 1], None),
        (None, None),
        ({"/a": True}, None),
    ],
)
def test_subscription_field_may_be_a_string_or_a_non_empty_array_of_strings(
    value: object, expected: list[str] | None
) -> None:
    assert p.subscriptions_of({"channel": p.META_SUBSCRIBE, "subscription": value}) == expected


def test_client_advice_is_the_advice_object_or_empty() -> None:
    assert p.client_advice({"advice": {"timeout": 0}}) == {"timeout": 0}
    assert p.client_advice({"advice": [1]}) == {}
    assert p.client_advice({}) == {}


# -- replies and error strings -----------------------------------------------------------------


def test_error_strings_follow_code_args_message() -> None:
    assert p.error(402, "session_unknown") == "402::session_unknown"
    denied = p.error(403, "Subscription denied", "xj3", "/foo/bar")
    assert denied == "403:xj3,/foo/bar:Subscription denied"


def test_denied_strings_match_cometd() -> None:
    assert p.denied("subscribe", "not_logged_in") == "403:not_logged_in:subscribe_denied"
    assert p.denied("handshake") == "403::handshake_denied"
    assert p.denied("publish", "") == "403::publish_denied"


@pytest.mark.parametrize(
    ("constant", "text"),
    [
        (p.SESSION_UNKNOWN, "402::session_unknown"),
        (p.HANDSHAKE_DENIED, "403::handshake_denied"),
        (p.SUBSCRIPTION_MISSING, "403::subscription_missing"),
        (p.SUBSCRIPTION_INVALID, "403::subscription_invalid"),
        (p.CHANNEL_MISSING, "400::channel_missing"),
        (p.CHANNEL_INVALID, "405::channel_invalid"),
        (p.MESSAGE_ID_INVALID, "405::message_id_invalid"),
        (p.MESSAGE_DELETED, "404::message_deleted"),
        (p.CONNECTION_TYPE_UNSUPPORTED, "301::connection_type_unsupported"),
    ],
)
def test_error_constants_are_the_strings_cometd_clients_key_on(constant: str, text: str) -> None:
    assert constant == text


def test_reply_echoes_channel_and_id() -> None:
    reply = p.reply_to({"channel": "/meta/subscribe", "id": "7", "clientId": "c"}, successful=True)
    assert reply == {"channel": "/meta/subscribe", "id": "7", "successful": True}


def test_reply_without_request_id_has_no_id() -> None:
    assert "id" not in p.reply_to({"channel": "/a"}, successful=True)


def test_failure_carries_error_and_only_a_valid_client_id() -> None:
    good = p.failure({"channel": "/a", "id": 3, "clientId": "abc"}, p.CHANNEL_INVALID)
    assert good == {
        "channel": "/a",
        "id": 3,
        "successful": False,
        "error": "405::channel_invalid",
        "clientId": "abc",
    }
    bad = p.failure({"channel": "/a", "clientId": "<script>"}, p.CLIENT_ID_INVALID)
    assert "clientId" not in bad


def test_encode_batch_joins_encoded_messages_into_one_array() -> None:
    parts = [p.encode({"channel": "/a"}), p.encode({"channel": "/b", "data": [1]})]
    assert p.decode_batch(p.encode_batch(parts), 10) == [
        {"channel": "/a"},
        {"channel": "/b", "data": [1]},
    ]


# -- JSONP callback names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["cb", "jsonpcallback", "_x", "$", "a.b.c", "dojo.io.script.jsonp_1"]
)
def test_plain_javascript_identifiers_are_valid_jsonp_callbacks(name: str) -> None:
    assert p.is_valid_jsonp_callback(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "alert(1)",
        "alert(1)//",
        "a;b",
        "a b",
        "<script>",
        "1abc",
        "a..b",
        "a.",
        ".a",
        "a[0]",
        "a\nb",
        "cb\n",
        "x=1",
        "a-b",
        "\u2028",
        "x" * 65,
        "a.b.c.d.e.f",
    ],
)
def test_hostile_or_odd_jsonp_callbacks_are_rejected(name: str) -> None:
    assert not p.is_valid_jsonp_callback(name)
