import type { FastifySchemaCompiler, FastifySchemaValidationError } from 'fastify';
import type { TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import { Value } from 'typebox/value';

/**
 * Route validation with TypeBox. JSON bodies are checked strictly, as E2B's server does (a number
 * where a string belongs is a 400, never silently coerced); query strings and path parameters
 * arrive as strings and are converted first (`limit=5`, a single `state=running` to an array).
 * Defaults from the schemas are applied in both cases.
 */
export const validatorCompiler: FastifySchemaCompiler<TSchema> = ({ schema, httpPart }) => {
  const check = Compile(schema);
  const convert = httpPart !== 'body';
  return (input: unknown) => {
    const value = Value.Default(schema, convert ? Value.Convert(schema, input) : input);
    if (check.Check(value)) return { value };
    const error = [...check.Errors(value)].slice(0, 5) as unknown as FastifySchemaValidationError[];
    return { error };
  };
};
