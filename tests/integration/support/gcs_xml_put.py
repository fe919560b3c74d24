"""Front for fake-gcs-server in the integration tests: GCS clients (object_store among
them) upload with the XML API (`PUT /BUCKET/OBJECT`, create-only with the header
`x-goog-if-generation-match: 0`), which fake-gcs-server does not implement; it
implements the same write in its JSON API (`uploadType=media`, `ifGenerationMatch`).
This front turns the one into the other and passes every other request through
unchanged, so reads, ranged reads, listings and deletes are fake-gcs-server's own.
What it proves and what it does not is written in docs/config.md (GCS).

usage: python3 gcs_xml_put.py LISTEN_PORT UPSTREAM_PORT
"""

import http.client
import http.server
import json
import sys
import urllib.parse

UPSTREAM = ("127.0.0.1", int(sys.argv[2]))
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def forward(method, target, headers, body):
    conn = http.client.HTTPConnection(*UPSTREAM, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.getheaders(), reply.read()
    finally:
        conn.close()


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def relay(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        parsed = urllib.parse.urlsplit(self.path)
        parts = parsed.path.lstrip("/").split("/", 1)
        xml_put = (
            self.command == "PUT"
            and len(parts) == 2
            and parts[0] not in ("upload", "storage", "download", "_internal")
            and "uploadType" not in parsed.query
        )
        if xml_put:
            self.xml_put(urllib.parse.unquote(parts[0]), urllib.parse.unquote(parts[1]), headers, body or b"")
            return
        status, reply_headers, data = forward(self.command, self.path, headers, body)
        self.reply(status, [(k, v) for k, v in reply_headers if k.lower() not in HOP_BY_HOP], data)

    def xml_put(self, bucket, name, headers, body):
        query = {"uploadType": "multipart"}
        match = headers.pop("x-goog-if-generation-match", None)
        if match is not None:
            query["ifGenerationMatch"] = match
        target = f"/upload/storage/v1/b/{urllib.parse.quote(bucket)}/o?{urllib.parse.urlencode(query)}"
        boundary = "pgcairn-front-boundary"
        meta = json.dumps({"name": name}).encode()
        multipart = b"".join([
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(), meta,
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(), body,
            f"\r\n--{boundary}--\r\n".encode(),
        ])
        headers["content-type"] = f"multipart/related; boundary={boundary}"
        status, _, data = forward("POST", target, headers, multipart)
        if status != 200:
            self.reply(status, [("Content-Type", "application/json")], data)
            return
        meta = json.loads(data)
        etag = meta.get("etag") or meta.get("md5Hash") or "fake"
        extra = [("ETag", f'"{etag}"'), ("x-goog-generation", str(meta.get("generation", "1")))]
        self.reply(200, extra, b"")

    def reply(self, status, headers, data):
        if status >= 500:
            sys.stderr.write(f"{self.command} {self.path} -> {status} {data[:300]!r} {dict(self.headers)}\n")
            sys.stderr.flush()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = relay


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Front).serve_forever()
