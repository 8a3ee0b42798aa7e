// Owns the shape checks every parser of JSON from outside shares (the API's answers, the manifest, the journal, the state files).

export type Json = Record<string, unknown>;

/** A JSON object: not null, not an array. */
export const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/** A string that Date.parse reads as a time. */
export const isTime = (v: unknown): v is string => typeof v === "string" && !Number.isNaN(Date.parse(v));
