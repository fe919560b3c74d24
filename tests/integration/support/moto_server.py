"""moto's S3 server for the integration tests, with one adjustment: moto 5.2 accepts a
put into a bucket under Object Lock only with `Content-MD5` or
`x-amz-sdk-checksum-algorithm`, where AWS S3 accepts any `x-amz-checksum-*` header
("Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with
Object Lock parameters"). pgcairn sends `x-amz-checksum-sha256` (object_store's SHA256
checksum); this front names the algorithm for moto when that header is there, and
changes nothing else. Without the checksum header moto still refuses the put, as S3 does.

usage: python3 moto_server.py PORT
"""

import sys

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

moto = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if "HTTP_X_AMZ_CHECKSUM_SHA256" in environ:
        environ.setdefault("HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM", "SHA256")
    return moto(environ, start_response)


run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
