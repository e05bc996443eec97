"""Scrapes of the binaries' /metrics for the e2e tests, parsed with prometheus_client's
text parser (installed by scripts/install-deps.sh test; the importing test module is
skipped without it).

    s = scrape(proc)                     # a Scrape: {(sample name, labels): value}
    s.value("piko_proxy_requests_total", status="200", method="GET")
    delta(after, before, name, **labels)
"""

import http.client

import pytest

from helpers import SLOW

prom_parser = pytest.importorskip(
    "prometheus_client.parser",
    reason="prometheus_client is installed by scripts/install-deps.sh test")


class Scrape(dict):
    """{(sample name, frozenset(labels.items())): value}, plus the exposition's text, its
    content type and the family types ({family name as in # TYPE: type})."""

    def __init__(self, text, content_type):
        super().__init__()
        self.text = text
        self.content_type = content_type
        self.types = {}
        for fam in prom_parser.text_string_to_metric_families(text):
            for s in fam.samples:
                self[(s.name, frozenset(s.labels.items()))] = s.value
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind

    def value(self, name, **labels):
        return self.get((name, frozenset(labels.items())), 0.0)

    def sample_names(self):
        """Every name a query may use: the samples' and the families' (histograms with
        _bucket, _sum and _count; families without series yet included)."""
        names = {name for name, _ in self}
        for fam, kind in self.types.items():
            if kind == "histogram":
                names |= {fam + "_bucket", fam + "_sum", fam + "_count"}
            else:
                names.add(fam)
        return names

    def counts(self):
        """{(name, labels): value} of every counter sample and histogram _count."""
        out = {}
        for (name, labels), v in self.items():
            if self.types.get(name) == "counter" or (
                    name.endswith("_count") and self.types.get(name[:-6]) == "histogram"):
                out[(name, labels)] = v
        return out


def scrape(proc, headers=None):
    """The /metrics of a server or sidecar (asserts 200 and the text format 0.0.4)."""
    conn = http.client.HTTPConnection(proc.admin_host, proc.admin_port, timeout=5 * SLOW)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        ctype = r.getheader("content-type") or ""
    finally:
        conn.close()
    assert r.status == 200, (r.status, body[:200])
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return Scrape(body.decode(), ctype)


def delta(after, before, name, **labels):
    return after.value(name, **labels) - before.value(name, **labels)
