"""Interop between imcast and the official Volcengine Python SDK (`pip install volcengine`).

Run by tests/it/interop.rs inside a cached venv. Two modes, each printing one JSON object:

  send   SDK signs with SignerV4.sign_only and POSTs to imcast's mock (which must accept it).
         args: send HOST:PORT AK SK ACTION BODY_FILE
  verify SDK re-derives the signature of a request imcast's client signed (read as JSON from a
         file: method, path, query pairs, headers, body) and compares the Authorization header.
         args: verify REQUEST_FILE SK [SESSION_TOKEN]
"""
import datetime
import json
import sys
import urllib.error
import urllib.request
from collections import OrderedDict

from volcengine.Credentials import Credentials
from volcengine.auth.SignParam import SignParam
from volcengine.auth.SignerV4 import SignerV4

SERVICE = "rtc"
REGION = "cn-north-1"


def send(hostport, ak, sk, action, body_file):
    with open(body_file, "r", encoding="utf-8") as f:
        body = f.read()
    p = SignParam()
    p.set_method("POST")
    p.set_host(hostport)
    p.set_path("/")
    p.set_query(OrderedDict([("Action", action), ("Version", "2020-12-01")]))
    p.set_header_list(OrderedDict([("Host", hostport), ("Content-Type", "application/json")]))
    p.set_body(body)
    p.set_date(datetime.datetime.now(datetime.timezone.utc))
    r = SignerV4.sign_only(p, Credentials(ak, sk, SERVICE, REGION))
    req = urllib.request.Request(
        "http://%s/?Action=%s&Version=2020-12-01" % (hostport, action),
        data=body.encode("utf-8"),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Date": r.xdate,
            "X-Content-Sha256": r.xContextSha256,
            "Authorization": r.authorization,
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, text = resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8")
    print(json.dumps({"status": status, "response": json.loads(text),
                      "signed_headers": r.xSignedHeaders}))


def verify(request_file, sk, token=""):
    with open(request_file, "r", encoding="utf-8") as f:
        req = json.load(f)
    headers = {k: v for k, v in req["headers"]}
    ak = headers["Authorization"].split("Credential=")[1].split("/")[0]
    p = SignParam()
    p.set_method(req["method"])
    p.set_host(headers["Host"])
    p.set_path(req["path"])
    p.set_query(OrderedDict((k, v) for k, v in req["query"]))
    # The SDK adds X-Date, X-Content-Sha256 and X-Security-Token itself.
    p.set_header_list(OrderedDict(
        (k, v) for k, v in req["headers"]
        if k in ("Host", "Content-Type") or (k.startswith("X-") and k not in (
            "X-Date", "X-Content-Sha256", "X-Security-Token"))))
    p.set_body(bytes(req["body"]))
    p.set_date(datetime.datetime.strptime(headers["X-Date"], "%Y%m%dT%H%M%SZ"))
    r = SignerV4.sign_only(p, Credentials(ak, sk, SERVICE, REGION, token))
    print(json.dumps({
        "sdk_authorization": r.authorization,
        "imcast_authorization": headers["Authorization"],
        "sdk_content_sha256": r.xContextSha256,
        "imcast_content_sha256": headers["X-Content-Sha256"],
        "match": r.authorization == headers["Authorization"]
        and r.xContextSha256 == headers["X-Content-Sha256"],
    }))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "send":
        send(*sys.argv[2:7])
    elif mode == "verify":
        verify(*sys.argv[2:5])
    else:
        sys.exit("unknown mode %r" % mode)
