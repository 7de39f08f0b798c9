// A small image for importer tests (not runnable: see runnable-image.ts for one that runs).
import { gzip, tarOf, type LayerEntry } from './image-archive.ts';

/** Three layers: a file later whited out, a directory made opaque, a file owned by 1000, a setuid file. */
export async function sampleLayers(): Promise<Buffer[]> {
  const l1: LayerEntry[] = [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n' },
    { name: 'etc/group', content: 'root:x:0:\napp:x:1000:\n' },
    { name: 'old/', type: 'directory' },
    { name: 'old/gone.txt', content: 'lower' },
    { name: 'old/kept.txt', content: 'kept' },
    { name: 'opq/', type: 'directory' },
    { name: 'opq/lower-a', content: 'a' },
    { name: 'opq/sub/', type: 'directory' },
    { name: 'opq/sub/lower-b', content: 'b' },
    { name: 'home/', type: 'directory' },
    { name: 'home/app/', type: 'directory', uid: 1000, gid: 1000, mode: 0o750 },
  ];
  const l2: LayerEntry[] = [
    { name: 'old/', type: 'directory' },
    { name: 'old/.wh.gone.txt' },
    { name: 'opq/', type: 'directory' },
    { name: 'opq/.wh..wh..opq' },
    { name: 'opq/upper', content: 'upper' },
    { name: 'home/app/owned', content: 'mine', uid: 1000, gid: 1000, mode: 0o640 },
    { name: 'usr/', type: 'directory' },
    { name: 'usr/bin/', type: 'directory' },
    { name: 'usr/bin/su-like', content: '#!/bin/sh\n', mode: 0o4755 },
    { name: 'usr/bin/alias', type: 'link', linkname: 'usr/bin/su-like' },
    { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
    // Absolute links name the image's own files (resolved in the sandbox's root); a relative
    // one may climb as long as it stays inside.
    { name: 'usr/bin/python3', type: 'symlink', linkname: '/usr/bin/python3.11' },
    { name: 'usr/bin/sh-link', type: 'symlink', linkname: '../../bin/su-like' },
  ];
  const l3: LayerEntry[] = [{ name: 'srv/', type: 'directory' }, { name: 'srv/data/', type: 'directory', uid: 1000, gid: 1000 }, { name: 'srv/data/hello', content: 'hi' }];
  return [await tarOf(l1), gzip(await tarOf(l2)), await tarOf(l3)];
}

export const SAMPLE_CONFIG = {
  env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'GREETING=hello from the image'],
  user: 'app',
  workdir: '/srv/data',
  cmd: ['/bin/sh'],
};
