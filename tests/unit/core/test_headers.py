from proxy.core.headers import (
    set_cookie_name,
    TrustedProxies, clean_request_headers, clean_response_headers, forwarded_for, groups_header, request_id,
)


def names(headers):
    return [n for n, _ in headers]


def test_identity_headers_are_stripped_in_every_spelling():
    incoming = [
        ("X-Idgate-Subject", "admin"), ("x-idgate-groups", "root"), ("X_Idgate_Subject", "admin"),
        ("X-IDGATE-ASSERTION", "forged"), ("X-Forwarded-User", "admin"), ("X_Forwarded_Email", "a@b"),
        ("X-Auth-Request-User", "admin"), ("Accept", "*/*"),
    ]
    assert names(clean_request_headers(incoming, trusted_peer=True, keep_authorization=False)) == ["Accept"]


def test_headers_named_in_connection_are_dropped():
    incoming = [("Connection", "keep-alive, X-Custom, X_Other"), ("X-Custom", "1"), ("X-Other", "2"), ("X-Kept", "3")]
    assert names(clean_request_headers(incoming, trusted_peer=False, keep_authorization=False)) == ["X-Kept"]


def test_hop_by_hop_and_host_are_dropped():
    incoming = [("Host", "a"), ("Keep-Alive", "5"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Content-Type", "text/plain")]
    assert names(clean_request_headers(incoming, trusted_peer=False, keep_authorization=False)) == ["Content-Type"]


def test_forwarding_headers_only_from_trusted_peers():
    incoming = [("X-Forwarded-Port", "443"), ("X-Real-IP", "1.2.3.4"), ("X-Original-URI", "/admin"), ("Accept", "*/*")]
    assert names(clean_request_headers(incoming, trusted_peer=False, keep_authorization=False)) == ["Accept"]
    assert len(clean_request_headers(incoming, trusted_peer=True, keep_authorization=False)) == 4


def test_reemitted_headers_never_pass_through_even_from_trusted_peers():
    incoming = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Host", "admin.internal"), ("x_forwarded_proto", "https"),
                ("Forwarded", "for=1.2.3.4"), ("X_Request_Id", "collide-1234"), ("Accept", "*/*")]
    assert names(clean_request_headers(incoming, trusted_peer=True, keep_authorization=False)) == ["Accept"]


def test_forwarded_for_keeps_a_trusted_chain_only():
    assert forwarded_for(["6.6.6.6", "7.7.7.7, 8.8.8.8"], "10.0.0.2", trusted_peer=True) == "6.6.6.6, 7.7.7.7, 8.8.8.8, 10.0.0.2"
    assert forwarded_for(["6.6.6.6"], "10.0.0.2", trusted_peer=False) == "10.0.0.2"


def test_authorization_is_forwarded_only_when_the_route_keeps_it():
    incoming = [("Authorization", "Bearer t")]
    assert clean_request_headers(incoming, trusted_peer=False, keep_authorization=False) == []
    assert clean_request_headers(incoming, trusted_peer=False, keep_authorization=True) == incoming


def test_response_hop_by_hop_removed():
    assert names(clean_response_headers([("Connection", "close, X-A"), ("X-A", "1"), ("Content-Length", "3")])) == ["Content-Length"]


def test_request_id_kept_from_trusted_peers_when_well_formed_and_replaced_otherwise():
    assert request_id("abcdefgh-1234", trusted_peer=True) == "abcdefgh-1234"
    assert request_id("abcdefgh-1234", trusted_peer=False) != "abcdefgh-1234"
    for bad in (None, "", "short", "x" * 129, "a b c d e f g h", "abc\r\nX-Evil: 1"):
        minted = request_id(bad, trusted_peer=True)
        assert minted != bad and len(minted) == 32
    assert len({request_id(None, trusted_peer=False) for _ in range(1000)}) == 1000


def test_trusted_proxies():
    trusted = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8"])
    assert "127.0.0.1" in trusted and "10.2.3.4" in trusted
    assert "127.0.0.2" not in trusted and "not-an-ip" not in trusted and None not in trusted
    assert "127.0.0.1" not in TrustedProxies([])


def test_groups_header_is_bounded_and_unambiguous():
    assert groups_header(["a", "b,c", "d\n", "e"]) == "a,e"
    many = [f"group-{i:04d}" for i in range(1000)]
    value = groups_header(many, limit=100)
    assert len(value) <= 100 and value.split(",") == many[: len(value.split(","))]


def test_trace_context_passes_only_from_a_peer_trusted_for_it():
    incoming = [("traceparent", "00-1-2-01"), ("TraceState", "a=1"), ("baggage", "user=admin"),
                ("X-Amzn-Trace-Id", "Root=1"), ("Accept", "*/*")]
    assert names(clean_request_headers(incoming, trusted_peer=False, keep_authorization=False)) == ["Accept"]
    assert len(clean_request_headers(incoming, trusted_peer=True, keep_authorization=False)) == 5
    # tracing.trusted_peers may narrow (or widen) the trusted proxies for trace context alone
    assert names(clean_request_headers(incoming, trusted_peer=True, trusted_context=False,
                                       keep_authorization=False)) == ["Accept"]
    assert len(clean_request_headers(incoming, trusted_peer=False, trusted_context=True, keep_authorization=False)) == 5


def test_set_cookie_name_is_the_name_a_server_reads_back():
    assert set_cookie_name("sid=abc; Path=/; Secure") == "sid"
    assert set_cookie_name(" \tsid \t=abc") == "sid"
    assert set_cookie_name("sid=a=b") == "sid"
    assert set_cookie_name("sid=") == "sid"
    assert set_cookie_name("=sid=abc; Path=/") == "sid"      # nameless: the browser sends back `sid=abc`
    assert set_cookie_name(" =sid=abc") == "sid"
    assert set_cookie_name("justavalue; Path=/") == ""        # sent back with no `=`: no name to read
    assert set_cookie_name("") == ""
