"""Signature schemes at their edges: the exact bounds, separators and encodings each one
accepts, the reason each refusal gives, and secrets or headers that are not plain UTF-8.

The signatures are computed here with ``hashlib``/``hmac`` directly, never through the scheme
under test. Helpers come from ``tests.test_signatures``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import pytest

from shared.errors import ConfigError, SignatureError, StaleTimestamp
from shared.signatures import SchemeConfig, build_scheme
from shared.signatures.nowallet import MAX_SIGNATURES
from shared.signatures.standard_webhooks import MAX_ENTRIES
from tests.test_signatures import (
    GENERIC_BODY,
    NOW,
    OPTIONS,
    SMINO_GUID,
    WHSEC_1,
    dotnet_stamp,
    hdrs,
    hmac_hex,
    make,
    smino_body,
)


def refusal(scheme_name: str, headers: dict[str, str], body: bytes = GENERIC_BODY) -> str:
    """The reason ``scheme_name`` gives for refusing the request."""
    with pytest.raises(SignatureError) as err:
        make(scheme_name).verify(hdrs(headers), body, NOW)
    return str(err.value)


# -- nowallet --------------------------------------------------------------------------------


def nowallet_signature(key: bytes, body: bytes = GENERIC_BODY) -> str:
    unique_key = OPTIONS["nowallet"]["unique_key"].encode()
    payload = hmac_hex(unique_key, key).encode() + body
    return hmac_hex("first-secret", payload)


def test_nowallet_takes_sixteen_signatures_and_refuses_seventeen() -> None:
    # Given a header with the key, 15 stale signatures and the good one (16 in all)
    good = nowallet_signature(b"K")
    sixteen = ["key=K"] + [f"signature={'00' * 32}"] * (MAX_SIGNATURES - 1) + [f"signature={good}"]
    # When it is verified, Then it is accepted
    make("nowallet").verify(hdrs({"Nowallet-Signature": ",".join(sixteen)}), GENERIC_BODY, NOW)
    # And one more signature makes it too many
    seventeen = ",".join([*sixteen, f"signature={good}"])
    reason = refusal("nowallet", {"Nowallet-Signature": seventeen})
    assert reason == "too many items in Nowallet-Signature"


def test_nowallet_key_may_hold_an_equals_sign() -> None:
    # Given a key that is base64 with its padding, signed as the provider does
    key = "bm9uY2U="
    header = f"key={key},signature={nowallet_signature(key.encode())}"
    # When it is verified, Then the key is everything after the first "="
    make("nowallet").verify(hdrs({"Nowallet-Signature": header}), GENERIC_BODY, NOW)


def test_nowallet_key_of_bytes_that_are_not_utf8_is_signed_as_sent() -> None:
    # Given a key byte aiohttp decodes with surrogateescape (0xff is not UTF-8)
    header = "key=\udcff,signature=" + nowallet_signature(b"\xff")
    # When it is verified, Then the signature over the raw byte matches
    make("nowallet").verify(hdrs({"Nowallet-Signature": header}), GENERIC_BODY, NOW)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("key=K,signature", "malformed Nowallet-Signature"),
        ("key=K", "Nowallet-Signature needs one key and a signature"),
        (f"signature={'ab' * 32}", "Nowallet-Signature needs one key and a signature"),
        ("key=\ud800,signature=" + "ab" * 32, "header is not text"),
    ],
)
def test_nowallet_refusals_say_why(header: str, reason: str) -> None:
    assert refusal("nowallet", {"Nowallet-Signature": header}) == reason


def test_nowallet_signs_each_delivery_with_a_fresh_key() -> None:
    # Given one body signed twice
    scheme = make("nowallet")
    first, second = (scheme.sign(GENERIC_BODY, NOW)["Nowallet-Signature"] for _ in range(2))
    # Then each carries its own key (a nonce), and each verifies
    assert first.split(",")[0] != second.split(",")[0]
    for header in (first, second):
        scheme.verify(hdrs({"Nowallet-Signature": header}), GENERIC_BODY, NOW)


# -- base64 and header text ------------------------------------------------------------------


def test_a_base64_signature_with_a_stray_character_is_refused() -> None:
    # Given Shopify's signature with a character outside the base64 alphabet inserted
    digest = hmac.new(b"first-secret", GENERIC_BODY, "sha256").digest()
    encoded = base64.b64encode(digest).decode()
    headers = {"X-Shopify-Hmac-Sha256": encoded[:4] + "!" + encoded[4:]}
    # When it is verified, Then it is not base64 (never decoded by skipping the stray byte)
    assert refusal("shopify", headers) == "signature is not base64"


def test_a_header_that_is_not_text_is_refused() -> None:
    # Given a shared secret header holding a lone surrogate no wire byte could produce
    headers = {"X-Webhook-Token": "first-\ud800"}
    # Then it is refused as not text
    assert refusal("shared-secret", headers) == "header is not text"


# -- smino -----------------------------------------------------------------------------------


def smino_hash(stamp: str, secret: str = "first-secret") -> str:  # noqa: S107 - a test key
    text = f"{SMINO_GUID.replace('-', '')}.{stamp}.{secret}"
    return hashlib.sha512(text.encode("utf-8", "surrogatepass")).hexdigest().upper()


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's clock in Haiti's time zone (UTC-5 in November)."""
    monkeypatch.setenv("TZ", "America/Port-au-Prince")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
@pytest.mark.parametrize(
    "stamp",
    ["11/14/2023 22:13:20", "2023-11-14T22:13:20", "2023-11-14T17:13:20-05:00"],
)
def test_smino_timestamps_are_utc_unless_they_say_otherwise(stamp: str) -> None:
    # Given a machine far from UTC and a TimeStamp meaning NOW, with or without an offset
    body = smino_body(stamp)
    # When it is verified at NOW, Then it is fresh
    make("smino").verify(hdrs({"x-hook-signature": smino_hash(stamp)}), body, NOW)


def test_smino_stale_timestamp_says_so() -> None:
    stamp = dotnet_stamp(NOW - 301)
    with pytest.raises(StaleTimestamp) as err:
        make("smino").verify(hdrs({"x-hook-signature": smino_hash(stamp)}), smino_body(stamp), NOW)
    assert str(err.value) == "TimeStamp outside tolerance"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not a JSON document"),
        (b"[]", "body is not a JSON object"),
        (
            json.dumps({"EventId": 1, "TimeStamp": "x"}).encode(),
            "EventId and TimeStamp must be strings",
        ),
        (smino_body("x", "not-a-guid"), "EventId is not a GUID"),
    ],
)
def test_smino_cannot_sign_a_body_and_says_why(body: bytes, reason: str) -> None:
    # What `hookline send smino --body FILE` prints for a body it cannot sign
    with pytest.raises(ValueError) as err:
        make("smino").sign(body, NOW)
    assert str(err.value) == f"smino: cannot sign this body: {reason}"


def test_smino_unparseable_timestamp_says_so() -> None:
    body = smino_body("yesterday")
    reason = refusal("smino", {"x-hook-signature": smino_hash("yesterday")}, body)
    assert reason == "unparseable TimeStamp"


def test_smino_secret_from_undecodable_environment_bytes_signs_and_verifies() -> None:
    # Given a secret read from an environment variable whose bytes are not UTF-8 (Python keeps
    # them as surrogates)
    secret = "smino-\udcff"
    scheme = build_scheme("smino", SchemeConfig(source="test", secrets=(secret,)))
    body = smino_body(dotnet_stamp(NOW))
    # When a body is signed, Then the hash is over the secret's code points, and it verifies
    headers = scheme.sign(body, NOW)
    assert headers == {"x-hook-signature": smino_hash(dotnet_stamp(NOW), secret)}
    scheme.verify(hdrs(headers), body, NOW)


# -- slack -----------------------------------------------------------------------------------


def slack_hex(stamp: str = str(NOW), body: bytes = GENERIC_BODY) -> str:
    return hmac_hex("first-secret", f"v0:{stamp}:".encode() + body)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (f"v1={slack_hex()}", "signature is not v0=<hex>"),
        (slack_hex(), "signature is not v0=<hex>"),
        (f"v0={slack_hex()}=", "signature is not hex"),
    ],
)
def test_slack_refuses_what_is_not_v0_and_says_why(signature: str, reason: str) -> None:
    # Given the right digest under another version, without one, or followed by a stray "="
    headers = {"X-Slack-Request-Timestamp": str(NOW), "X-Slack-Signature": signature}
    assert refusal("slack", headers) == reason


def test_slack_echoes_a_one_character_challenge() -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c"}).encode()
    assert make("slack").handshake(body) == {"challenge": "c"}


# -- standard webhooks -----------------------------------------------------------------------


def standard_signature(msg_id: bytes, body: bytes = GENERIC_BODY) -> str:
    key = base64.b64decode(WHSEC_1.removeprefix("whsec_"))
    digest = hmac.new(key, msg_id + f".{NOW}.".encode() + body, "sha256").digest()
    return base64.b64encode(digest).decode()


def standard_headers(signature: str, msg_id: str = "msg_1") -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(NOW), "webhook-signature": signature}


def test_standard_webhooks_takes_sixteen_entries_and_refuses_seventeen() -> None:
    wrong = "v1," + base64.b64encode(b"\0" * 32).decode()
    sixteen = [wrong] * (MAX_ENTRIES - 1) + ["v1," + standard_signature(b"msg_1")]
    make("standard-webhooks").verify(hdrs(standard_headers(" ".join(sixteen))), GENERIC_BODY, NOW)
    reason = refusal("standard-webhooks", standard_headers(" ".join([*sixteen, wrong])))
    assert reason == "too many signatures"


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        # the right digest, but under a version this scheme does not check
        (f"v1a,{standard_signature(b'msg_1')}", "no v1 signature"),
        (f"v1,{standard_signature(b'msg_1')},x", "signature is not base64"),
        ("v1," + base64.b64encode(b"\0" * 32).decode(), "no signature matches"),
    ],
)
def test_standard_webhooks_refusals_say_why(signature: str, reason: str) -> None:
    assert refusal("standard-webhooks", standard_headers(signature)) == reason


def test_standard_webhooks_id_of_bytes_that_are_not_utf8_is_signed_as_sent() -> None:
    # Given a webhook-id byte aiohttp decodes with surrogateescape, signed over the raw byte
    headers = standard_headers("v1," + standard_signature(b"msg_\xff"), msg_id="msg_\udcff")
    # When it is verified, Then it matches
    make("standard-webhooks").verify(hdrs(headers), GENERIC_BODY, NOW)


# -- the helpers every scheme shares, and stripe ---------------------------------------------


def moncash_headers(stamp: str = str(NOW), signature: str | None = None) -> dict[str, str]:
    digest = hmac_hex("first-secret", stamp.encode() + b"." + GENERIC_BODY)
    return {"X-MCC-Timestamp": stamp, "X-MCC-Signature": signature or digest}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (moncash_headers(stamp="17e8"), "malformed timestamp"),
        (moncash_headers(stamp=str(NOW - 301)), "timestamp outside tolerance"),
        (moncash_headers(signature="ab" * 32), "signature does not match"),
        ({"X-MCC-Timestamp": str(NOW)}, "missing header X-MCC-Signature"),
        (
            [("X-MCC-Timestamp", str(NOW)), ("X-MCC-Timestamp", str(NOW))],
            "header X-MCC-Timestamp repeated",
        ),
    ],
)
def test_shared_refusals_say_why(
    headers: dict[str, str] | list[tuple[str, str]], reason: str
) -> None:
    with pytest.raises(SignatureError) as err:
        make("moncash").verify(hdrs(headers), GENERIC_BODY, NOW)
    assert str(err.value) == reason


def test_a_prefixed_signature_without_its_prefix_says_so() -> None:
    headers = {"X-Hub-Signature-256": hmac_hex("first-secret", GENERIC_BODY)}
    assert refusal("github", headers) == "signature lacks the prefix 'sha256='"


def test_an_unknown_hmac_algorithm_names_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        make("hmac", algorithm="md5")
    assert str(err.value) == "source 'test': 'algorithm' must be one of sha256, sha512"


def stripe_v1(stamp: str = str(NOW)) -> str:
    return hmac_hex("first-secret", stamp.encode() + b"." + GENERIC_BODY)


def test_stripe_takes_thirty_two_items_and_refuses_thirty_three() -> None:
    thirty_two = [f"t={NOW}"] + [f"v0={'00' * 32}"] * 30 + [f"v1={stripe_v1()}"]
    make("stripe").verify(hdrs({"Stripe-Signature": ",".join(thirty_two)}), GENERIC_BODY, NOW)
    reason = refusal("stripe", {"Stripe-Signature": ",".join([*thirty_two, "v0=00"])})
    assert reason == "too many items in Stripe-Signature"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (f"t={NOW},v1", "malformed Stripe-Signature"),
        (f"v1={stripe_v1()}", "Stripe-Signature needs one t and at least one hex v1"),
        # everything after the first "=" is the value: a "t" of "1=2" is not a timestamp
        (f"t={NOW}=2,v1={stripe_v1()}", "malformed timestamp"),
    ],
)
def test_stripe_refusals_say_why(header: str, reason: str) -> None:
    assert refusal("stripe", {"Stripe-Signature": header}) == reason
