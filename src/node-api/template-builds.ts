// The node API of template builds, defined once for both sides: the files a build copies
// (uploaded tarballs, kept by content hash per team), putting one into a build's sandbox, and
// capturing a sandbox's file system as a new template.
import { Type, type Static } from 'typebox';

export const TEMPLATE_BUILD_ROUTES = {
  /** GET: whether it is stored; PUT: store it (the body, a tar or tar.gz, streamed). */
  buildFile: '/v1/build-files/:owner/:hash',
  /** POST: write a stored build file into the sandbox (as root), for its COPY step to unpack. */
  sandboxBuildFile: '/v1/sandboxes/:id/build-files',
  /** POST: the sandbox's whole file system becomes a new template. */
  capture: '/v1/sandboxes/:id/capture',
} as const;

const TEMPLATE_NAME = '^[a-z0-9][a-z0-9._-]{0,62}$';
/** The team a build file belongs to: a team id (a path segment on the node: no dots, no slashes). */
const OWNER = '^[A-Za-z0-9_-]{1,128}$';
/** The SDK's files hash: sha256, hex. */
const HASH = '^[0-9a-f]{64}$';

export const BuildFileParams = Type.Object({ owner: Type.String({ pattern: OWNER }), hash: Type.String({ pattern: HASH }) });
export type BuildFileParams = Static<typeof BuildFileParams>;

export const SandboxBuildFileBody = Type.Object(
  {
    owner: Type.String({ pattern: OWNER }),
    hash: Type.String({ pattern: HASH }),
    /** Where in the sandbox (absolute). */
    path: Type.String({ pattern: '^/', minLength: 2, maxLength: 4096 }),
  },
  { additionalProperties: false },
);
export type SandboxBuildFileBody = Static<typeof SandboxBuildFileBody>;

const StringMap = Type.Record(Type.String({ minLength: 1, maxLength: 256 }), Type.String({ maxLength: 8192 }), { maxProperties: 256 });

export const CaptureBody = Type.Object(
  {
    name: Type.String({ pattern: TEMPLATE_NAME }),
    /** The team the template is the build of (template.json's owner). */
    owner: Type.String({ minLength: 1, maxLength: 128 }),
    /** What its sandboxes' processes get by default. */
    env: StringMap,
    workdir: Type.Union([Type.String({ pattern: '^/', maxLength: 4096 }), Type.Null()]),
    user: Type.Union([Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.-]+$' }), Type.Null()]),
    /** Run when a sandbox of the template starts (bash command), and how to tell it is ready. */
    startCmd: Type.Union([Type.String({ minLength: 1, maxLength: 65536 }), Type.Null()]),
    readyCmd: Type.Union([Type.String({ minLength: 1, maxLength: 65536 }), Type.Null()]),
    /** Where it came from, for the template's description. */
    fromTemplate: Type.String({ pattern: TEMPLATE_NAME }),
    buildId: Type.String({ maxLength: 64 }),
  },
  { additionalProperties: false },
);
export type CaptureBody = Static<typeof CaptureBody>;
