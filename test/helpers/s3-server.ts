import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { S3StoreConfig } from '../../src/runtime/s3-snapshot-store.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** Installed by scripts/install-s3-server.sh (run by scripts/setup.sh). */
const PYTHON = process.env.NESTBOX_S3_PYTHON ?? path.join(process.env.NESTBOX_HOME ?? '/var/lib/nestbox', 'deps/bin/nestbox-s3-python');
/** Swift stores xattrs: the directory must be on a file system that has them (not every tmpfs does). */
const ROOT = process.env.NESTBOX_TEST_ROOT ?? '/var/lib/nestbox/test';

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
 * A real S3 server for tests: OpenStack Swift with its s3api middleware (scripts/s3-server.py),
 * in a temporary directory, on a free port of `host` (default loopback), with a user of random
 * credentials.
 */
export async function startS3Server(opts: { host?: string } = {}): Promise<TestS3Server> {
  const host = opts.host ?? '127.0.0.1';
  const { mkdir } = await import('node:fs/promises');
  await mkdir(ROOT, { recursive: true });
  const dir = await mkdtemp(path.join(ROOT, 's3-'));
  const port = await freePort();
  const accessKeyId = `nestbox:t${randomBytes(6).toString('hex')}`;
  const secretAccessKey = randomBytes(24).toString('hex');
  const child: ChildProcess = spawn(
    PYTHON,
    [path.join(repoRoot, 'scripts/s3-server.py'), '--dir', dir, '--port', String(port), '--host', host, '--access-key', accessKeyId, '--secret-key', secretAccessKey, '--exit-with-parent'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const endpoint = `http://${host}:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const deadline = Date.now() + 90_000;
    while (!out.includes(`ready ${endpoint}`)) {
      if (child.exitCode !== null || child.signalCode !== null) {
        const logs = await readFile(path.join(dir, 'log', 'proxy.log'), 'utf8').catch(() => '');
        throw new Error(`the S3 server exited (${child.exitCode ?? child.signalCode}): ${out}\n${logs}`);
      }
      if (Date.now() > deadline) throw new Error(`the S3 server did not answer on ${endpoint} within 90 s: ${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // Ready to accept connections is not yet ready to serve: Swift's account and container
    // servers answer 503 (SlowDown through s3api) for a moment after they start.
    const { S3Client, ListBucketsCommand } = await import('@aws-sdk/client-s3');
    const client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId, secretAccessKey } });
    for (;;) {
      try {
        await client.send(new ListBucketsCommand({}));
        break;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`the S3 server on ${endpoint} did not serve within 90 s: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    client.destroy();
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
