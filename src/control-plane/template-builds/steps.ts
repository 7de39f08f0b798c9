// The steps of a template build as E2B's SDK sends them ({type, args, filesHash?, force?}),
// checked and turned into what the runner does. Pure: no I/O.
import { invalid } from '../../core/errors.ts';
import { TEMPLATE_NAME_PATTERN } from '../../core/ids.ts';

export type BuildStep =
  | { kind: 'run'; command: string; user: string | null }
  | { kind: 'copy'; src: string; dest: string; user: string | null; mode: string | null; filesHash: string }
  | { kind: 'env'; vars: Record<string, string> }
  | { kind: 'workdir'; path: string }
  | { kind: 'user'; user: string };

/** A step as it arrives (TemplateStep). */
export interface WireStep {
  type: string;
  args?: string[];
  filesHash?: string;
  force?: boolean;
}

const USER = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MODE = /^0?[0-7]{3,4}$/;
const FILES_HASH = /^[0-9a-f]{64}$/;

function checkUser(user: string, where: string): string {
  if (!USER.test(user)) throw invalid(`${where}: "${user}" is not a user name (letters, digits, "_", ".", "-")`);
  return user;
}

function checkPath(p: string, where: string): string {
  if (!p || p.length > 4096 || p.includes('\0')) throw invalid(`${where}: invalid path`);
  return p;
}

/**
 * The steps of a build, checked. Step numbers in messages count from 1, as E2B's step names do
 * (the base is step 0, "base").
 */
export function parseSteps(steps: WireStep[]): BuildStep[] {
  return steps.map((s, i) => {
    const where = `step ${i + 1} (${s.type})`;
    const args = s.args ?? [];
    switch (s.type) {
      case 'RUN': {
        if (args.length < 1 || args.length > 2 || !args[0]) throw invalid(`${where}: needs a command and, optionally, a user`);
        return { kind: 'run', command: args[0], user: args[1] ? checkUser(args[1], where) : null };
      }
      case 'COPY': {
        if (args.length < 2 || args.length > 4) throw invalid(`${where}: needs a source, a destination, and optionally a user and a mode`);
        const [src, dest, user, mode] = args as [string, string, string?, string?];
        if (!s.filesHash || !FILES_HASH.test(s.filesHash)) throw invalid(`${where}: needs the filesHash of its uploaded files`);
        if (src.startsWith('/') || src.split('/').includes('..')) throw invalid(`${where}: the source must be a path inside the build context`);
        if (mode && !MODE.test(mode)) throw invalid(`${where}: "${mode}" is not an octal file mode`);
        return {
          kind: 'copy', src: checkPath(src, where), dest: checkPath(dest, where), user: user ? checkUser(user, where) : null,
          mode: mode || null, filesHash: s.filesHash,
        };
      }
      case 'ENV': {
        if (args.length === 0 || args.length % 2 !== 0) throw invalid(`${where}: needs name and value pairs`);
        const vars: Record<string, string> = {};
        for (let k = 0; k < args.length; k += 2) {
          if (!ENV_NAME.test(args[k]!)) throw invalid(`${where}: "${args[k]}" is not an environment variable name`);
          vars[args[k]!] = args[k + 1]!;
        }
        return { kind: 'env', vars };
      }
      case 'WORKDIR': {
        if (args.length !== 1) throw invalid(`${where}: needs one path`);
        return { kind: 'workdir', path: checkPath(args[0]!, where) };
      }
      case 'USER': {
        if (args.length !== 1) throw invalid(`${where}: needs one user`);
        return { kind: 'user', user: checkUser(args[0]!, where) };
      }
      default:
        throw invalid(`${where}: unknown step type (RUN, COPY, ENV, WORKDIR and USER are supported)`);
    }
  });
}

/** The builds' image-less default (Template() with no from…): E2B's base image is our `base`. */
const E2B_BASE_IMAGE = /^(docker\.io\/)?e2bdev\/base(:[\w.-]+)?$/;

/**
 * The template a build starts from. `fromTemplate` names one; `fromImage` names an image, which
 * must have been imported (no registry is reached): a template named as the image, or whose
 * image tags include it. Registry credentials are refused.
 */
export function baseOf(body: { fromTemplate?: string; fromImage?: string; fromImageRegistry?: unknown }):
  { kind: 'template'; name: string } | { kind: 'image'; ref: string } {
  if (body.fromImageRegistry !== undefined) {
    throw invalid('registry credentials (fromImageRegistry, fromAWSRegistry, fromGCPRegistry) are not supported: this server pulls no images; import the image as a template (docker save, then nestbox template import) and build from it');
  }
  if (body.fromTemplate && body.fromImage) throw invalid('give fromTemplate or fromImage, not both');
  if (body.fromTemplate) {
    if (!TEMPLATE_NAME_PATTERN.test(body.fromTemplate)) throw invalid(`"${body.fromTemplate}" is not a template name`);
    return { kind: 'template', name: body.fromTemplate };
  }
  if (!body.fromImage) throw invalid('a build needs fromTemplate or fromImage');
  if (E2B_BASE_IMAGE.test(body.fromImage)) return { kind: 'template', name: 'base' };
  return { kind: 'image', ref: body.fromImage };
}

/** The names an image reference is known by: as given, and with docker.io/library/ or :latest added or taken away. */
export function imageRefVariants(ref: string): string[] {
  let short = ref.replace(/^docker\.io\//, '').replace(/^library\//, '');
  if (!/:[\w.-]+$/.test(short.split('/').pop()!) && !short.includes('@')) short += ':latest';
  const out = new Set([ref, short, `docker.io/${short}`, `docker.io/library/${short}`]);
  if (short.endsWith(':latest')) out.add(short.slice(0, -':latest'.length));
  return [...out];
}

/** A one-line description of a step for the build's log. */
export function describeStep(step: BuildStep): string {
  switch (step.kind) {
    case 'run':
      return `RUN ${step.command}${step.user ? ` (as ${step.user})` : ''}`;
    case 'copy':
      return `COPY ${step.src} ${step.dest}${step.user ? ` (owner ${step.user})` : ''}${step.mode ? ` (mode ${step.mode})` : ''}`;
    case 'env':
      return `ENV ${Object.keys(step.vars).join(' ')}`;
    case 'workdir':
      return `WORKDIR ${step.path}`;
    case 'user':
      return `USER ${step.user}`;
  }
}

/** An absolute path: `p` as given when absolute, else under `base` ("/" when none). */
export function resolveIn(base: string | null, p: string): string {
  if (p.startsWith('/')) return p;
  const root = base ?? '/';
  return `${root.replace(/\/+$/, '')}/${p}`.replace(/\/\.\//g, '/');
}

/**
 * Unpacks a COPY step's tarball (paths relative to the build context, as the SDK packs them)
 * and copies what `src` names to `dest`, as Docker's COPY does: a directory's contents go into
 * dest; a file goes to dest, or into it when dest ends in "/" or is a directory; several
 * matches go into dest. The copies belong to `owner` and, when given, files get `mode`. Run as
 * root inside the sandbox, arguments positional (never spliced into the script).
 *   $1 tarball  $2 src (may be a glob)  $3 dest (absolute)  $4 owner  $5 mode or ""
 */
export const COPY_SCRIPT = `set -euo pipefail
tarball=$1 src=$2 dest=$3 owner=$4 mode=$5
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp" "$tarball"' EXIT
tar -xf "$tarball" -C "$tmp" --no-same-owner
cd "$tmp"
shopt -s nullglob dotglob
IFS=
matches=( $src )
if [ \${#matches[@]} -eq 0 ]; then echo "COPY: nothing in the uploaded files matches $src" >&2; exit 1; fi
chown -R -- "$owner:" "\${matches[@]}" 2>/dev/null || chown -R -- "$owner" "\${matches[@]}"
if [ -n "$mode" ]; then find "\${matches[@]}" -type f -exec chmod -- "$mode" {} +; fi
into_dir=no
if [ \${#matches[@]} -gt 1 ] || [[ "$dest" == */ ]] || [ -d "$dest" ]; then into_dir=yes; fi
for m in "\${matches[@]}"; do
  if [ -d "$m" ] && [ ! -L "$m" ]; then
    if [ ! -d "$dest" ]; then mkdir -p -- "$dest"; chown -- "$owner:" "$dest" 2>/dev/null || chown -- "$owner" "$dest"; fi
    cp -a -- "$m/." "$dest/"
  elif [ "$into_dir" = yes ]; then
    mkdir -p -- "$dest"
    cp -a -- "$m" "$dest/"
  else
    mkdir -p -- "$(dirname -- "$dest")"
    cp -a -- "$m" "$dest"
  fi
done
`;

/** WORKDIR: the directory is made (owned by the current user) when it does not exist. $1 path, $2 owner. */
export const WORKDIR_SCRIPT = `set -eu
if [ ! -d "$1" ]; then mkdir -p -- "$1"; chown -- "$2:" "$1" 2>/dev/null || chown -- "$2" "$1"; fi`;

/** USER: the user must exist in the template. $1 user. */
export const USER_SCRIPT = `id -u -- "$1" >/dev/null 2>&1 || { echo "user $1 does not exist in the template (create it in a RUN step first)" >&2; exit 1; }`;
