// What the init answers, and the shape checks that make its untrusted answers safe to use: a
// malformed answer is a protocol error of the call it answers.
import { InitError, protocolError, SPEC_CODES, type InitErrorCode } from './errors.ts';
import { isObj, type Json } from './frames.ts';

const MAX_MESSAGE = 2000;

export type Channel = 'stdout' | 'stderr' | 'pty';
/** Process output channels by their DATA channel number. */
export const CHANNELS: Record<number, Channel> = { 1: 'stdout', 2: 'stderr', 3: 'pty' };
export interface OutputChunk {
  channel: Channel;
  data: Buffer;
}
export interface ExitStatus {
  exitCode: number | null;
  signal: number | null;
}
export interface ProcessInfo {
  pid: number;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  tag: string | null;
  pty: boolean;
}
export type EntryType = 'file' | 'dir' | 'symlink' | 'other';
export interface Entry {
  name: string;
  type: EntryType;
  path: string;
  size: number;
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  mtime_ms: number;
  symlink_target: string | null;
}
export type FsOp = 'create' | 'write' | 'remove' | 'rename' | 'chmod';
export interface FsEvent {
  name: string;
  op: FsOp;
}

export const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);

export function str(o: Json, k: string): string {
  const v = o[k];
  if (typeof v !== 'string') throw protocolError(`field ${k} is not a string`);
  return v;
}
export function int(o: Json, k: string, min = Number.MIN_SAFE_INTEGER): number {
  const v = o[k];
  if (!isInt(v) || v < min) throw protocolError(`field ${k} is not a valid integer`);
  return v;
}
export function optInt(o: Json, k: string): number | null {
  const v = o[k];
  if (v === null || v === undefined) return null;
  if (!isInt(v)) throw protocolError(`field ${k} is not an integer or null`);
  return v;
}
function optStr(o: Json, k: string): string | null {
  const v = o[k];
  if (v === null || v === undefined) return null;
  if (typeof v !== 'string') throw protocolError(`field ${k} is not a string or null`);
  return v;
}
export function bool(o: Json, k: string): boolean {
  const v = o[k];
  if (typeof v !== 'boolean') throw protocolError(`field ${k} is not a boolean`);
  return v;
}
export function expectType(o: Json, type: string): void {
  if (o.type !== type) throw protocolError(`expected a ${type} answer, got ${describe(o.type)}`);
}
function describe(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : typeof v;
}

const ENTRY_TYPES = new Set<string>(['file', 'dir', 'symlink', 'other']);
const FS_OPS = new Set<string>(['create', 'write', 'remove', 'rename', 'chmod']);

export function parseEntry(v: unknown): Entry {
  if (!isObj(v)) throw protocolError('entry is not an object');
  const type = str(v, 'type');
  if (!ENTRY_TYPES.has(type)) throw protocolError('bad entry type');
  return {
    name: str(v, 'name'),
    type: type as EntryType,
    path: str(v, 'path'),
    size: int(v, 'size', 0),
    mode: int(v, 'mode', 0),
    permissions: str(v, 'permissions'),
    owner: str(v, 'owner'),
    group: str(v, 'group'),
    mtime_ms: int(v, 'mtime_ms'),
    symlink_target: optStr(v, 'symlink_target'),
  };
}

function parseStrings(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw protocolError(`${what} is not an array of strings`);
  return v as string[];
}

export function parseProcess(v: unknown): ProcessInfo {
  if (!isObj(v)) throw protocolError('process is not an object');
  const env = v.env;
  if (!isObj(env) || !Object.values(env).every((x) => typeof x === 'string')) throw protocolError('env is not an object of strings');
  const safeEnv: Record<string, string> = Object.create(null);
  for (const [k, x] of Object.entries(env)) safeEnv[k] = x as string;
  return {
    pid: int(v, 'pid', 1),
    argv: parseStrings(v.argv, 'argv'),
    env: { ...safeEnv },
    cwd: str(v, 'cwd'),
    tag: optStr(v, 'tag'),
    pty: bool(v, 'pty'),
  };
}

export function parseFsEvent(o: Json): FsEvent {
  expectType(o, 'fs_event');
  const op = str(o, 'op');
  if (!FS_OPS.has(op)) throw protocolError('bad fs_event op');
  return { name: str(o, 'name'), op: op as FsOp };
}

/** An error frame becomes an InitError; anything else that is not `type` is a protocol error. */
export function errorFrom(o: Json): InitError | null {
  if (o.type !== 'error') return null;
  const code = o.code;
  const message = o.message;
  if (typeof code !== 'string' || !(SPEC_CODES as readonly string[]).includes(code) || typeof message !== 'string') {
    return protocolError('malformed error answer');
  }
  return new InitError(code as InitErrorCode, message.slice(0, MAX_MESSAGE));
}
