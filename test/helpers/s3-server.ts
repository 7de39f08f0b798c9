import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../src/runtime/command.ts';
import type { S3StoreConfig } from '../../src/runtime/s3-snapshot-store.ts';

/** Installed by scripts/install-s3-server.sh (run by scripts/setup.sh). */
const BIN_DIR = process.env.NESTBOX_S3_SERVER_BIN_DIR ?? path.join(process.env.NESTBOX_HOME ?? '/var/lib/nestbox', 'deps/bin');

export interface TestS3Server {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  dir: string;
  /** A store configuration on this server (the bucket is created by the store's prepare()). */
  storeConfig: (bucket: string, prefix?: string) => S3StoreConfig;
  stop: () => Promise<void>;
}

/**
 * A real S3 server for tests: radosgw (Ceph's RADOS Gateway) on its SQLite "dbstore" backend,
 * in a temporary directory, on a free loopback port, with a user of random credentials.
 */
export async function startS3Server(): Promise<TestS3Server> {
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-s3-'));
  const port = await freePort();
  const conf = path.join(dir, 'ceph.conf');
  await mkdir(path.join(dir, 'db'));
  await mkdir(path.join(dir, 'run'));
  await writeFile(conf, [
    '[global]',
    'log to stderr = false',
    `log file = ${dir}/radosgw.log`,
    'debug rgw = 1',
    'admin socket =',
    '[client]',
    'rgw backend store = dbstore',
    'rgw config store = dbstore',
    `dbstore config uri = file:${dir}/db/config.db`,
    `dbstore db dir = ${dir}/db`,
    `rgw data = ${dir}/data`,
    `run dir = ${dir}/run`,
    `rgw frontends = beast endpoint=127.0.0.1:${port}`,
    'rgw enable usage log = false',
    '',
  ].join('\n'));
  const common = ['--no-mon-config', '-c', conf, '-n', 'client.rgw.nestbox'];
  const accessKeyId = 'NB' + randomBytes(9).toString('hex').toUpperCase();
  const secretAccessKey = randomBytes(24).toString('base64url');
  await run([path.join(BIN_DIR, 'radosgw-admin'), ...common, 'user', 'create', '--uid=nestbox', '--display-name=nestbox',
    `--access-key=${accessKeyId}`, `--secret-key=${secretAccessKey}`]);
  const child: ChildProcess = spawn(path.join(BIN_DIR, 'radosgw'), ['-f', ...common], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const endpoint = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`radosgw exited ${child.exitCode}: ${stderr}${await readFile(path.join(dir, 'radosgw.log'), 'utf8').catch(() => '')}`);
      const ok = await fetch(endpoint + '/').then((r) => r.ok, () => false);
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`radosgw did not answer on ${endpoint} within 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    endpoint, region: 'us-east-1', accessKeyId, secretAccessKey, dir, stop,
    storeConfig: (bucket, prefix = '') => ({ endpoint, bucket, region: 'us-east-1', accessKeyId, secretAccessKey, prefix, forcePathStyle: true }),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}
