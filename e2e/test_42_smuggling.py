"""HTTP/1.1 request smuggling defences at the proxy port: every ambiguous framing is
refused with a JSON error and the connection closed, before anything reaches the service;
unambiguous requests around them are still served."""

import pytest

from helpers import RawConn, h1
from test_09_bad_input import assert_still_serves, expect_json_error_then_close

HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: my-service\r\n"

CASES = [
    ("cl_and_te", HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400),
    ("te_and_cl", HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
     400),
    ("double_cl_same", HEAD + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("double_cl_differ", HEAD + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("cl_list", HEAD + b"Content-Length: 4, 4\r\n\r\nabcd", 400),
    ("cl_sign", HEAD + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("double_te", HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("te_not_last", HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 501),
    ("te_gzip_chunked", HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te_identity", HEAD + b"Transfer-Encoding: identity\r\n\r\n", 501),
    ("obs_fold", HEAD + b"Content-Length: 0\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("obs_fold_te", HEAD + b"X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
     400),
    ("bare_cr", HEAD + b"Content-Length: 0\r\nX-A: a\rb\r\n\r\n", 400),
    ("space_before_colon", HEAD + b"Content-Length : 4\r\n\r\nabcd", 400),
]


@pytest.mark.parametrize("name,data,status", CASES, ids=[c[0] for c in CASES])
def test_ambiguous_framing_is_refused(shared_stack, name, data, status):
    srv, sc, svc = shared_stack
    before = len(svc.paths)
    expect_json_error_then_close(srv.proxy_port, data, status)
    assert len(svc.paths) == before, "the refused request reached the service"
    assert_still_serves(srv)


def test_bad_chunk_size_never_reaches_the_service_as_valid(shared_stack):
    """A chunk size that is not hex, or overflows: the request is answered 400 (or, if the
    service already answered, the connection is closed) and the service never sees a
    complete body."""
    srv, sc, svc = shared_stack
    for bad in (b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n"):
        with RawConn(srv.proxy_port) as c:
            c.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + bad)
            try:
                r = c.read_response()
            except (ConnectionResetError, EOFError, OSError):
                r = None  # the service answered first, then the proxy cut the connection
            assert r is None or r.status == 400, r
            assert c.closed_by_peer()
    assert_still_serves(srv)


def test_chunk_extensions_and_lf_only_lines_still_work(shared_stack):
    srv, sc, svc = shared_stack
    with RawConn(srv.proxy_port) as c:
        c.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
    r = h1(srv.proxy_port, "GET", "/echo?lf=1", {"x-piko-endpoint": "my-service"})
    assert r.status == 200
