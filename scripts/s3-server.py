#!/usr/bin/python3
"""A local S3-compatible server: OpenStack Swift (Debian's python3-swift) with its s3api
middleware, all in one directory, on 127.0.0.1. For tests and single-host use; installed by
scripts/install-s3-server.sh (run by scripts/setup.sh). Runs in the foreground until SIGTERM
or SIGINT, with the proxy (the S3 endpoint) on --port and the account, container and object
servers on free loopback ports.

    /var/lib/nestbox/deps/bin/nestbox-s3-python scripts/s3-server.py \
        --dir /var/lib/nestbox/s3 --port 9000 \
        --access-key nestbox:snapshots --secret-key "$(openssl rand -hex 20)"

then, for an agent:

    NESTBOX_S3_ENDPOINT=http://127.0.0.1:9000 NESTBOX_S3_BUCKET=nestbox-snapshots \
    NESTBOX_S3_ACCESS_KEY_ID=nestbox:snapshots NESTBOX_S3_SECRET_ACCESS_KEY=... nestbox agent ...

The access key is "<account>:<user>" (Swift's tempauth); the data lives in <dir>/srv (it needs
a file system with user xattrs: ext4, xfs). Prints "ready <endpoint>" on stdout once it answers.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

RUN_SERVER = """
import sys
from swift.common import utils
utils.set_swift_dir(sys.argv[1])
from swift.common.wsgi import run_wsgi
sys.exit(run_wsgi(sys.argv[2], sys.argv[3], verbose=False))
"""


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)


def build_ring(etc, kind, port):
    import contextlib
    import io
    from swift.cli.ringbuilder import main as ringbuilder
    builder = os.path.join(etc, kind + '.builder')
    for argv in (['create', '6', '1', '1'], ['add', 'r1z1-127.0.0.1:%d/d1' % port, '1'], ['rebalance']):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                ringbuilder(['swift-ring-builder', builder] + argv)
        except SystemExit as e:
            if e.code not in (None, 0):
                raise RuntimeError('swift-ring-builder %s %s exited %s: %s' % (kind, ' '.join(argv), e.code, out.getvalue()))


def die_with_parent():
    # The servers go when this launcher goes, even by SIGKILL.
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', required=True)
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--host', default='127.0.0.1', help='address of the S3 endpoint (the backends stay on loopback)')
    ap.add_argument('--access-key', default='nestbox:snapshots', help='<account>:<user>')
    ap.add_argument('--secret-key', required=True)
    ap.add_argument('--region', default='us-east-1')
    ap.add_argument('--exit-with-parent', action='store_true', help='stop when the process that started this one is gone (tests)')
    a = ap.parse_args()
    account, _, user = a.access_key.partition(':')
    if not account.isalnum() or not user.replace('-', '').replace('_', '').isalnum():
        sys.exit('--access-key must be <account>:<user> (letters and digits)')

    d = os.path.abspath(a.dir)
    etc, srv, log = (os.path.join(d, x) for x in ('etc', 'srv', 'log'))
    for p in (etc, os.path.join(srv, 'd1'), log):
        os.makedirs(p, exist_ok=True)
    # The backends get new ports at every start: the rings are rebuilt to name them.
    ports = {kind: free_port() for kind in ('account', 'container', 'object')}
    for kind, port in ports.items():
        for f in (kind + '.builder', kind + '.ring.gz'):
            if os.path.exists(os.path.join(etc, f)):
                os.unlink(os.path.join(etc, f))
        build_ring(etc, kind, port)
    if not os.path.exists(os.path.join(etc, 'swift.conf')):
        write(os.path.join(etc, 'swift.conf'), '[swift-hash]\nswift_hash_path_suffix = %s\nswift_hash_path_prefix = nestbox\n'
              '[storage-policy:0]\nname = default\ndefault = yes\n' % os.urandom(8).hex())
    common = ('[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = %d\nworkers = 0\nswift_dir = ' + etc +
              '\ndevices = ' + srv + '\nmount_check = false\nlog_facility = LOG_LOCAL1\nlog_level = WARNING\n'
              'log_udp_host = 127.0.0.1\nlog_udp_port = 9\n')
    for kind, port in ports.items():
        write(os.path.join(etc, kind + '-server.conf'), common % port +
              '[pipeline:main]\npipeline = %s-server\n[app:%s-server]\nuse = egg:swift#%s\n' % (kind, kind, kind) +
              ('[%s-replicator]\n[%s-auditor]\n' % (kind, kind)))
    proxy_common = common.replace('bind_ip = 127.0.0.1', 'bind_ip = ' + a.host, 1)
    write(os.path.join(etc, 'proxy-server.conf'), proxy_common % a.port + """
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
[filter:s3api]
use = egg:swift#s3api
location = %s
[filter:tempauth]
use = egg:swift#tempauth
user_%s_%s = %s .admin
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:%d
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
""" % (a.region, account, user, a.secret_key, free_port()))

    children = []

    def stop(*_):
        for c in children:
            if c.poll() is None:
                c.terminate()
        deadline = time.time() + 5
        for c in children:
            try:
                c.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                c.kill()
        sys.exit(0)

    # The private Python of install-s3-server.sh runs through its wrapper, which says so here.
    python = os.environ.get('NESTBOX_S3_PYTHON') or sys.executable
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for kind in ('account', 'container', 'object', 'proxy'):
        out = open(os.path.join(log, kind + '.log'), 'ab')
        children.append(subprocess.Popen(
            [python, '-c', RUN_SERVER, etc, os.path.join(etc, kind + '-server.conf'), kind + '-server'],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
    endpoint = 'http://%s:%d' % (a.host, a.port)
    deadline = time.time() + 60
    while True:
        for c in children:
            if c.poll() is not None:
                stop()
                sys.exit('a swift server exited %s; see %s' % (c.returncode, log))
        try:
            urllib.request.urlopen(endpoint + '/healthcheck', timeout=1).read()
            break
        except Exception:
            if time.time() > deadline:
                stop()
                sys.exit('the S3 server did not answer on %s within 60 s' % endpoint)
            time.sleep(0.1)
    print('ready', endpoint, flush=True)
    parent = os.getppid()
    while True:
        if a.exit_with_parent and os.getppid() != parent:
            stop()
        for c in children:
            if c.poll() is not None:
                print('a swift server exited %s; stopping' % c.returncode, file=sys.stderr, flush=True)
                stop()
        time.sleep(0.5)


if __name__ == '__main__':
    main()
