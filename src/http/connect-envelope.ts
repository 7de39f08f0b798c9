// The Connect protocol's envelope, for the few places that write one by hand (the agent's answer
// to an RPC nobody serves, the CLI's envd client): a flags byte, a big-endian length, the message.

/** The flag of the envelope that ends a stream (its message: `{}` or `{error}`). */
export const END_STREAM_FLAG = 0x02;

/** `message` as JSON in one envelope. */
export function connectEnvelope(message: unknown, flags = 0): Buffer {
  const body = Buffer.from(JSON.stringify(message));
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}
