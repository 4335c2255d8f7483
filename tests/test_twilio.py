"""Twilio: signatures checked exactly as Twilio makes them, callbacks parsed, media URLs built."""

import base64
import hashlib
import hmac

import pytest

from recsvc.core.twilio import (
    RecordingStatus,
    compute_signature,
    media_url,
    parse_recording_status,
    url_variants,
    validate_signature,
)

# Twilio's published example, with the signature Twilio gives for it. Sources:
# - twilio/twilio-python, tests/unit/test_request_validator.py (ValidationTest.setUp
#   and test_compute_signature);
# - TwilioDevEd/api-snippets, security/signature_validation/signature_validation.5.x.py,
#   the snippet shown on Twilio's "Secure webhooks" page
#   (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
# A later revision of that snippet (signature_validation.6.x.py) changed the phone
# numbers to +14158675310 but kept this signature, so that pair does not match;
# the numbers below are the ones the signature was made for.
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
DOC_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="

# More signatures published in twilio-python's tests/unit/test_request_validator.py,
# each over DOC_PARAMS with DOC_TOKEN: the same URL as Twilio signs it with the
# default port, and (for repeated names) Digits sent twice.
DOC_SIGNATURE_HTTPS_WITH_443 = "kvajT1Ptam85bY51eRf/AJRuM3w="  # https://mycompany.com:443/...
DOC_SIGNATURE_HTTP_WITH_80 = "0ZXoZLH/DfblKGATFgpif+LLRf4="  # http://mycompany.com:80/...
DOC_SIGNATURE_REPEATED_DIGITS = "IK+Dwps556ElfBT0I3Rgjkr1wJU="
DOC_REPEATED_DIGITS_FIELDS = [
    ("Sid", "CA123"),
    ("SidAccount", "AC123"),
    ("Digits", "5678"),
    ("Digits", "1234"),
]

TOKEN = "a3f1c2e4b5d6978812345678abcdef01"
CALLBACK_URL = "https://recsvc.example.com/twilio/recording-status?business=7"
CALLBACK_FIELDS = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "CallSid": "CA0123456789abcdef0123456789abcdef",
    "RecordingSid": "RE0123456789abcdef0123456789abcdef",
    "RecordingStatus": "completed",
    "RecordingDuration": "42",
}


# --- the published vectors -------------------------------------------------------


def test_published_example_signs_to_the_published_signature():
    assert compute_signature(DOC_URL, DOC_PARAMS, DOC_TOKEN) == DOC_SIGNATURE


def test_published_example_validates():
    assert validate_signature(DOC_URL, DOC_PARAMS, DOC_SIGNATURE, DOC_TOKEN) is True


def test_published_example_signed_with_port_443_validates_without_it():
    assert validate_signature(DOC_URL, DOC_PARAMS, DOC_SIGNATURE_HTTPS_WITH_443, DOC_TOKEN)


def test_published_example_over_http_signed_with_port_80_validates_without_it():
    url = DOC_URL.replace("https://", "http://")
    assert validate_signature(url, DOC_PARAMS, DOC_SIGNATURE_HTTP_WITH_80, DOC_TOKEN)


def test_published_repeated_name_signature_sorts_the_values():
    fields = DOC_REPEATED_DIGITS_FIELDS
    assert compute_signature(DOC_URL, fields, DOC_TOKEN) == DOC_SIGNATURE_REPEATED_DIGITS
    assert validate_signature(DOC_URL, fields, DOC_SIGNATURE_REPEATED_DIGITS, DOC_TOKEN)


# --- what is signed --------------------------------------------------------------


def test_field_order_does_not_matter():
    reversed_fields = list(reversed(list(DOC_PARAMS.items())))
    assert compute_signature(DOC_URL, reversed_fields, DOC_TOKEN) == DOC_SIGNATURE


def test_a_mapping_and_the_same_pairs_sign_alike():
    pairs = list(CALLBACK_FIELDS.items())
    assert compute_signature(CALLBACK_URL, pairs, TOKEN) == compute_signature(
        CALLBACK_URL, CALLBACK_FIELDS, TOKEN
    )


def test_repeated_names_sign_the_same_whatever_order_their_values_arrived_in():
    a = [("Digits", "1234"), ("To", "+1"), ("Digits", "5678")]
    b = [("Digits", "5678"), ("Digits", "1234"), ("To", "+1")]
    assert compute_signature(DOC_URL, a, TOKEN) == compute_signature(DOC_URL, b, TOKEN)


def test_a_repeated_value_counts_twice():
    once = [("Digits", "1234")]
    twice = [("Digits", "1234"), ("Digits", "1234")]
    assert compute_signature(DOC_URL, once, TOKEN) != compute_signature(DOC_URL, twice, TOKEN)


def test_names_sort_case_sensitively_in_code_point_order():
    # "Unix-style case-sensitive" order puts every capital before any small letter.
    fields = {"b": "1", "B": "2", "a": "3"}
    assert compute_signature(DOC_URL, fields, TOKEN) == compute_signature(
        DOC_URL + "B2a3b1", {}, TOKEN
    )


def test_no_fields_signs_the_url_alone():
    assert compute_signature(DOC_URL, {}, TOKEN) == compute_signature(DOC_URL, None, TOKEN)
    assert compute_signature(DOC_URL, [], TOKEN) == compute_signature(DOC_URL, None, TOKEN)


def test_unicode_values_are_signed_as_utf8_and_validate():
    fields = dict(CALLBACK_FIELDS, CallerName="שרה כהן", Note="café ☎ 😀")
    signature = compute_signature(CALLBACK_URL, fields, TOKEN)
    assert validate_signature(CALLBACK_URL, fields, signature, TOKEN)
    altered = dict(fields, Note="cafe ☎ 😀")
    assert not validate_signature(CALLBACK_URL, altered, signature, TOKEN)


def test_unicode_is_encoded_as_utf8_before_hashing():
    digest = hmac.new(b"tok", "https://h/pNoteé".encode("utf-8"), hashlib.sha1).digest()
    assert compute_signature("https://h/p", {"Note": "é"}, "tok") == base64.b64encode(
        digest
    ).decode()


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"Digits": ["1234", "5678"]}, id="list-value-as-from-parse_qs"),
        pytest.param({"Digits": None}, id="none-value"),
        pytest.param(["ab"], id="string-instead-of-pair"),
        pytest.param([("Digits", "1", "2")], id="triple"),
    ],
)
def test_fields_that_are_not_string_pairs_are_refused(fields):
    with pytest.raises(TypeError, match="parse_qsl"):
        compute_signature(DOC_URL, fields, TOKEN)


def test_lists_as_pairs_sign_like_tuples():
    as_lists = [[name, value] for name, value in DOC_PARAMS.items()]
    assert compute_signature(DOC_URL, as_lists, DOC_TOKEN) == DOC_SIGNATURE


def test_an_empty_auth_token_is_refused():
    with pytest.raises(ValueError, match="auth token is empty"):
        compute_signature(DOC_URL, DOC_PARAMS, "")
    with pytest.raises(ValueError, match="auth token is empty"):
        validate_signature(DOC_URL, DOC_PARAMS, DOC_SIGNATURE, "")


# --- default ports ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "variants"),
    [
        pytest.param(
            "https://example.com/cb?x=1",
            ("https://example.com/cb?x=1", "https://example.com:443/cb?x=1"),
            id="https-without-port-gains-443",
        ),
        pytest.param(
            "https://example.com:443/cb?x=1",
            ("https://example.com:443/cb?x=1", "https://example.com/cb?x=1"),
            id="https-with-443-loses-it",
        ),
        pytest.param(
            "http://example.com/cb",
            ("http://example.com/cb", "http://example.com:80/cb"),
            id="http-without-port-gains-80",
        ),
        pytest.param(
            "http://example.com:80/cb",
            ("http://example.com:80/cb", "http://example.com/cb"),
            id="http-with-80-loses-it",
        ),
        pytest.param(
            "https://example.com:8443/cb",
            ("https://example.com:8443/cb",),
            id="another-port-is-kept-as-signed",
        ),
        pytest.param(
            "http://example.com:443/cb",
            ("http://example.com:443/cb",),
            id="443-is-not-http's-default",
        ),
        pytest.param(
            "https://example.com",
            ("https://example.com", "https://example.com:443"),
            id="no-path",
        ),
        pytest.param(
            "https://example.com?x=1#frag",
            ("https://example.com?x=1#frag", "https://example.com:443?x=1#frag"),
            id="query-right-after-host",
        ),
        pytest.param(
            "https://user:pa:ss@example.com/cb",
            ("https://user:pa:ss@example.com/cb", "https://user:pa:ss@example.com:443/cb"),
            id="basic-auth-credentials-kept",
        ),
        pytest.param(
            "https://[2001:db8::1]:443/cb",
            ("https://[2001:db8::1]:443/cb", "https://[2001:db8::1]/cb"),
            id="ipv6-literal",
        ),
        pytest.param(
            "HTTPS://Example.com/cb",
            ("HTTPS://Example.com/cb", "HTTPS://Example.com:443/cb"),
            id="scheme-case-ignored-url-otherwise-untouched",
        ),
        pytest.param(
            "https://example.com/a%2Fb?q=a+b&r=%20",
            ("https://example.com/a%2Fb?q=a+b&r=%20", "https://example.com:443/a%2Fb?q=a+b&r=%20"),
            id="encoding-untouched",
        ),
        pytest.param("ftp://example.com/cb", ("ftp://example.com/cb",), id="not-http"),
        pytest.param("/twilio/cb", ("/twilio/cb",), id="not-absolute"),
    ],
)
def test_url_variants(url, variants):
    assert url_variants(url) == variants


def test_signed_with_default_port_validates_without_it():
    signed_url = "https://recsvc.example.com:443/twilio/recording-status?business=7"
    signature = compute_signature(signed_url, CALLBACK_FIELDS, TOKEN)
    assert validate_signature(CALLBACK_URL, CALLBACK_FIELDS, signature, TOKEN)


def test_signed_without_default_port_validates_with_it():
    signature = compute_signature(CALLBACK_URL, CALLBACK_FIELDS, TOKEN)
    seen_url = "https://recsvc.example.com:443/twilio/recording-status?business=7"
    assert validate_signature(seen_url, CALLBACK_FIELDS, signature, TOKEN)


def test_http_signed_with_port_80_validates_without_it_and_back():
    plain = "http://127.0.0.1/twilio/recording-status"
    with_80 = "http://127.0.0.1:80/twilio/recording-status"
    signed_with_80 = compute_signature(with_80, CALLBACK_FIELDS, TOKEN)
    signed_plain = compute_signature(plain, CALLBACK_FIELDS, TOKEN)
    assert validate_signature(plain, CALLBACK_FIELDS, signed_with_80, TOKEN)
    assert validate_signature(with_80, CALLBACK_FIELDS, signed_plain, TOKEN)


def test_a_non_default_port_is_not_stripped():
    signature = compute_signature(CALLBACK_URL, CALLBACK_FIELDS, TOKEN)
    seen_url = "https://recsvc.example.com:8443/twilio/recording-status?business=7"
    assert not validate_signature(seen_url, CALLBACK_FIELDS, signature, TOKEN)


# --- what is rejected ------------------------------------------------------------


def _good_signature():
    return compute_signature(CALLBACK_URL, CALLBACK_FIELDS, TOKEN)


def test_the_genuine_request_is_accepted():
    assert validate_signature(CALLBACK_URL, CALLBACK_FIELDS, _good_signature(), TOKEN) is True


def test_a_tampered_field_is_rejected():
    tampered = dict(CALLBACK_FIELDS, RecordingDuration="43")
    assert validate_signature(CALLBACK_URL, tampered, _good_signature(), TOKEN) is False


def test_a_missing_field_is_rejected():
    missing = {k: v for k, v in CALLBACK_FIELDS.items() if k != "RecordingSid"}
    assert validate_signature(CALLBACK_URL, missing, _good_signature(), TOKEN) is False


def test_an_extra_field_is_rejected():
    extra = dict(CALLBACK_FIELDS, RecordingUrl="https://evil.example/r")
    assert validate_signature(CALLBACK_URL, extra, _good_signature(), TOKEN) is False


def test_a_field_moved_from_body_to_query_is_rejected():
    url = CALLBACK_URL + "&RecordingDuration=42"
    body = {k: v for k, v in CALLBACK_FIELDS.items() if k != "RecordingDuration"}
    assert validate_signature(url, body, _good_signature(), TOKEN) is False


def test_a_tampered_query_string_is_rejected():
    url = CALLBACK_URL.replace("business=7", "business=8")
    assert validate_signature(url, CALLBACK_FIELDS, _good_signature(), TOKEN) is False


def test_another_scheme_is_rejected():
    url = CALLBACK_URL.replace("https://", "http://")
    assert validate_signature(url, CALLBACK_FIELDS, _good_signature(), TOKEN) is False


def test_a_wrong_token_is_rejected():
    wrong_token = TOKEN + "x"
    assert not validate_signature(CALLBACK_URL, CALLBACK_FIELDS, _good_signature(), wrong_token)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty-header"),
        pytest.param("not-a-signature", id="garbage"),
        pytest.param("RSOYDt4T1cUTdK1PDd93/VVr8B8", id="truncated"),
        pytest.param("\u00e9" * 28, id="non-ascii-header"),
    ],
)
def test_a_missing_or_malformed_signature_is_rejected(signature):
    assert validate_signature(CALLBACK_URL, CALLBACK_FIELDS, signature, TOKEN) is False


def test_a_signature_with_surrounding_whitespace_is_rejected():
    assert not validate_signature(CALLBACK_URL, CALLBACK_FIELDS, " " + _good_signature(), TOKEN)


# --- the recording status callback -----------------------------------------------

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
CALL_SID = "CA0123456789abcdef0123456789abcdef"
RECORDING_SID = "RE0123456789abcdef0123456789abcdef"
RECORDING_URL = (
    f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{RECORDING_SID}"
)

COMPLETED_CALLBACK = {
    "AccountSid": ACCOUNT_SID,
    "CallSid": CALL_SID,
    "RecordingSid": RECORDING_SID,
    "RecordingUrl": RECORDING_URL,
    "RecordingStatus": "completed",
    "RecordingDuration": "42",
    "RecordingChannels": "1",
    "RecordingSource": "RecordVerb",
    "RecordingStartTime": "Tue, 28 Nov 2026 23:16:31 +0000",
}
ABSENT_CALLBACK = {
    "AccountSid": ACCOUNT_SID,
    "CallSid": CALL_SID,
    "RecordingSid": RECORDING_SID,
    "RecordingUrl": "",
    "RecordingStatus": "absent",
    "RecordingDuration": "0",
    "ErrorCode": "16101",
}
FAILED_CALLBACK = {
    "AccountSid": ACCOUNT_SID,
    "CallSid": CALL_SID,
    "RecordingSid": RECORDING_SID,
    "RecordingStatus": "failed",
    "ErrorCode": "16103",
}


def test_a_completed_callback_gives_the_recording_url_and_duration():
    assert parse_recording_status(COMPLETED_CALLBACK) == RecordingStatus(
        account_sid=ACCOUNT_SID,
        call_sid=CALL_SID,
        recording_sid=RECORDING_SID,
        recording_url=RECORDING_URL,
        status="completed",
        duration=42,
    )


def test_an_absent_callback_has_no_recording_url():
    assert parse_recording_status(ABSENT_CALLBACK) == RecordingStatus(
        account_sid=ACCOUNT_SID,
        call_sid=CALL_SID,
        recording_sid=RECORDING_SID,
        recording_url=None,
        status="absent",
        duration=0,
    )


def test_a_failed_callback_without_url_or_duration_parses():
    assert parse_recording_status(FAILED_CALLBACK) == RecordingStatus(
        account_sid=ACCOUNT_SID,
        call_sid=CALL_SID,
        recording_sid=RECORDING_SID,
        recording_url=None,
        status="failed",
        duration=None,
    )


def test_only_the_sids_are_required():
    status = parse_recording_status({"AccountSid": ACCOUNT_SID, "CallSid": CALL_SID})
    assert status == RecordingStatus(ACCOUNT_SID, CALL_SID, None, None, None, None)


def test_a_recording_status_is_frozen():
    status = parse_recording_status(COMPLETED_CALLBACK)
    with pytest.raises(AttributeError):
        status.call_sid = "CA-other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("drop", "blank", "message"),
    [
        pytest.param(("AccountSid",), (), "has no AccountSid;", id="no-account-sid"),
        pytest.param(("CallSid",), (), "has no CallSid;", id="no-call-sid"),
        pytest.param((), ("CallSid",), "has no CallSid;", id="empty-call-sid"),
        pytest.param(
            ("AccountSid", "CallSid"), (), "has no AccountSid and no CallSid;", id="neither"
        ),
    ],
)
def test_a_callback_without_its_sids_is_refused_in_plain_words(drop, blank, message):
    fields = {k: v for k, v in COMPLETED_CALLBACK.items() if k not in drop}
    fields.update({name: "" for name in blank})
    with pytest.raises(ValueError, match=message):
        parse_recording_status(fields)


@pytest.mark.parametrize(
    ("raw", "duration"),
    [
        pytest.param("42", 42, id="seconds"),
        pytest.param("0", 0, id="zero"),
        pytest.param("", None, id="empty"),
        pytest.param("-1", None, id="negative-is-unknown"),
    ],
)
def test_recording_duration(raw, duration):
    fields = dict(COMPLETED_CALLBACK, RecordingDuration=raw)
    assert parse_recording_status(fields).duration == duration


@pytest.mark.parametrize("raw", ["4.2", "forty", " 42", "4_2", "\u0664\u0662"])
def test_a_duration_that_is_not_whole_seconds_is_refused(raw):
    fields = dict(COMPLETED_CALLBACK, RecordingDuration=raw)
    with pytest.raises(ValueError, match="RecordingDuration must be a whole number of seconds"):
        parse_recording_status(fields)


# --- media URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recording_url", "suffix", "expected"),
    [
        pytest.param(RECORDING_URL, "wav", RECORDING_URL + ".wav", id="wav"),
        pytest.param(RECORDING_URL, "mp3", RECORDING_URL + ".mp3", id="mp3"),
        pytest.param(RECORDING_URL + ".wav", "wav", RECORDING_URL + ".wav", id="wav-not-doubled"),
        pytest.param(RECORDING_URL + ".mp3", "mp3", RECORDING_URL + ".mp3", id="mp3-not-doubled"),
        pytest.param(RECORDING_URL + ".wav", "mp3", RECORDING_URL + ".mp3", id="wav-to-mp3"),
        pytest.param(RECORDING_URL + ".MP3", "wav", RECORDING_URL + ".wav", id="case-ignored"),
        pytest.param(
            RECORDING_URL + "?RequestedChannels=2",
            "mp3",
            RECORDING_URL + ".mp3?RequestedChannels=2",
            id="suffix-goes-before-the-query",
        ),
        pytest.param(
            RECORDING_URL + ".wav?RequestedChannels=2",
            "wav",
            RECORDING_URL + ".wav?RequestedChannels=2",
            id="existing-suffix-before-the-query-kept",
        ),
        pytest.param(
            "https://media.example.com/v1.2/RE123",
            "wav",
            "https://media.example.com/v1.2/RE123.wav",
            id="a-dot-earlier-in-the-path-is-not-a-suffix",
        ),
        pytest.param(
            "http://127.0.0.1:8099/rec/RE1.json",
            "wav",
            "http://127.0.0.1:8099/rec/RE1.json.wav",
            id="only-audio-suffixes-are-replaced",
        ),
    ],
)
def test_media_url(recording_url, suffix, expected):
    assert media_url(recording_url, suffix) == expected


@pytest.mark.parametrize("suffix", ["ogg", ".wav", "WAV", ""])
def test_media_url_refuses_other_suffixes(suffix):
    with pytest.raises(ValueError, match="'wav' or 'mp3'"):
        media_url(RECORDING_URL, suffix)


@pytest.mark.parametrize(
    ("recording_url", "message"),
    [
        pytest.param("", "recording URL is empty", id="empty"),
        pytest.param("https://api.twilio.com", "names no recording", id="no-path"),
        pytest.param("https://api.twilio.com/", "names no recording", id="root"),
        pytest.param(RECORDING_URL + "/", "names no recording", id="trailing-slash"),
    ],
)
def test_media_url_refuses_a_url_without_a_recording(recording_url, message):
    with pytest.raises(ValueError, match=message):
        media_url(recording_url, "wav")
