/**
 * Slack-style ids: a one-letter kind prefix and upper-case base-32 characters
 * (`T` workspace, `U` user, `B` bot, `A` app, `C` channel, `D` direct message,
 * `F` file, `W` webhook). Random, so ids leak nothing about counts or order.
 */
import { randomBytes } from "node:crypto"

export type IdKind = "T" | "U" | "B" | "A" | "C" | "D" | "F" | "W" | "S"

const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

export const make = (kind: IdKind, length = 10): string => {
  const bytes = randomBytes(length)
  let out: string = kind
  for (let i = 0; i < length; i++) out += alphabet[(bytes[i] ?? 0) & 31]
  return out
}

export const isId = (kind: IdKind, value: unknown): value is string =>
  typeof value === "string" && value.length >= 2 && value.length <= 32 && value[0] === kind && /^[A-Z0-9]+$/.test(value)
