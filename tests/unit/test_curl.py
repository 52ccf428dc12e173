"""tasks/curl.py: the one curl command for HTTP checks from a droplet, word by word
(tests/integration/test_curl.py runs it against real HTTP servers)."""

from __future__ import annotations

from tasks import curl


def test_the_command_is_quoted_word_by_word():
    assert curl.command("http://10.0.0.2:8008/cluster") == (
        "curl -s --max-time 5 -w '\\n%{http_code}' http://10.0.0.2:8008/cluster"
    )
    assert curl.command("http://x/a b", {"Host": "it's.test"}, 8, "/run/a.sock") == (
        "curl -s --max-time 8 -w '\\n%{http_code}' --unix-socket /run/a.sock "
        "-H 'Host: it'\"'\"'s.test' 'http://x/a b'"
    )
