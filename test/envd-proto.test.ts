// Nestbox's envd .proto files, compared field by field with the descriptors the official e2b
// SDK embeds: names, numbers, types, oneofs, optional flags, enums and RPC shapes must match.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileDesc, type GenFile } from '@bufbuild/protobuf/codegenv2';
import type { DescEnum, DescFile, DescMessage } from '@bufbuild/protobuf';
import { file_google_protobuf_timestamp } from '@bufbuild/protobuf/wkt';
import { file_process_process } from '../src/agent/envd/gen/process/process_pb.ts';
import { file_filesystem_filesystem } from '../src/agent/envd/gen/filesystem/filesystem_pb.ts';

function sdkFiles(): Map<string, GenFile> {
  const bundle = readFileSync(createRequire(import.meta.url).resolve('e2b').replace(/index\.js$/, 'index.mjs'), 'utf8');
  const out = new Map<string, GenFile>();
  for (const m of bundle.matchAll(/fileDesc\("([A-Za-z0-9+/=]+)"(, \[[^\]]*\])?\)/g)) {
    const f = fileDesc(m[1]!, m[2] ? [file_google_protobuf_timestamp] : []);
    out.set(f.proto.package, f);
  }
  return out;
}

function shapeOfMessage(m: DescMessage): unknown {
  return {
    name: m.typeName,
    fields: m.fields.map((f) => ({
      no: f.number,
      name: f.name,
      json: f.jsonName,
      kind: f.fieldKind,
      scalar: f.scalar ?? null,
      message: f.message?.typeName ?? null,
      enum: f.enum?.typeName ?? null,
      mapKey: f.fieldKind === 'map' ? f.mapKey : null,
      optional: f.proto.proto3Optional ?? false,
      oneof: f.oneof && !f.proto.proto3Optional ? f.oneof.name : null,
    })),
  };
}
const shapeOfEnum = (e: DescEnum) => ({ name: e.typeName, values: e.values.map((v) => [v.name, v.number]) });

function shape(f: DescFile) {
  return {
    package: f.proto.package,
    messages: f.messages.map(shapeOfMessage),
    enums: f.enums.map(shapeOfEnum),
    services: f.services.map((s) => ({
      name: s.typeName,
      methods: s.methods.map((m) => [m.name, m.input.typeName, m.output.typeName, m.methodKind]),
    })),
  };
}

/** Every message of a file, nested ones included. */
function allMessages(f: DescFile): DescMessage[] {
  const out: DescMessage[] = [];
  const walk = (m: DescMessage) => {
    out.push(m);
    m.nestedMessages.forEach(walk);
  };
  f.messages.forEach(walk);
  return out;
}

test('process.proto and filesystem.proto match the e2b SDK wire contract', () => {
  const sdk = sdkFiles();
  for (const ours of [file_process_process, file_filesystem_filesystem]) {
    const theirs = sdk.get(ours.proto.package);
    assert.ok(theirs, `the SDK has no ${ours.proto.package} descriptor`);
    const byName = (f: DescFile) => new Map(allMessages(f).filter((m) => !m.proto.options?.mapEntry).map((m) => [m.typeName, m]));
    const a = byName(ours);
    const b = byName(theirs);
    assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${ours.proto.package}: message set`);
    for (const [name, m] of a) assert.deepEqual(shapeOfMessage(m), shapeOfMessage(b.get(name)!), name);
    assert.deepEqual(shape(ours).enums, shape(theirs).enums);
    assert.deepEqual(shape(ours).services, shape(theirs).services);
  }
});
