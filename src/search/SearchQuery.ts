/**
 * Slack's search query syntax, parsed into what a search backend needs. Pure: no I/O,
 * and "now" is an argument (for `today`, `yesterday` and month names).
 *
 *   deploy "release notes" -draft rel*      words, a phrase, an excluded word, a prefix
 *   in:#general  in:general  in:<#C0ABC|general>  in:C0ABC    a channel (by name or id)
 *   in:@bob  in:<@U0BOB>                                      the DM with a user
 *   from:@alice  from:alice  from:<@U0ALI|alice>  from:me     the author
 *   before:2024-03-05  after:2024-03  on:yesterday  during:2024  during:march
 *   has:link  is:thread
 *
 * Several `in:` (or several `from:`) widen each other (any of them); different filters
 * narrow (all of them). Dates are UTC days, months or years: `before:` ends where the
 * period starts, `after:` begins where it ends, `on:`/`during:` are the period itself,
 * and several of them intersect (an empty intersection matches nothing). A token that
 * looks like a filter but is not one (`https://…`, `has:pin`, `before:someday`) is
 * searched as text, as Slack does.
 */

/** A text term: a word (a `prefix` ends with `*`), or a quoted phrase; `negated` excludes it (`-word`). */
export type Term =
  | { readonly _tag: "Word"; readonly text: string; readonly negated: boolean; readonly prefix: boolean }
  | { readonly _tag: "Phrase"; readonly text: string; readonly negated: boolean }

/** Someone named in a filter. */
export type UserRef =
  | { readonly _tag: "Handle"; readonly handle: string }
  | { readonly _tag: "UserId"; readonly id: string }
  | { readonly _tag: "Me" }

/** A conversation named by `in:`. */
export type Place =
  | { readonly _tag: "ChannelName"; readonly name: string }
  | { readonly _tag: "ChannelId"; readonly id: string }
  | { readonly _tag: "DirectMessage"; readonly user: UserRef }

/** Unix seconds: `from` inclusive, `to` exclusive; undefined is unbounded. */
export interface TimeRange {
  readonly from: number | undefined
  readonly to: number | undefined
}

export interface SearchQuery {
  readonly terms: ReadonlyArray<Term>
  /** Any of these conversations; empty for all the caller may read. */
  readonly in: ReadonlyArray<Place>
  /** By any of these authors; empty for anyone. */
  readonly from: ReadonlyArray<UserRef>
  readonly range: TimeRange
  readonly hasLink: boolean
  readonly isThread: boolean
  /** The filters contradict each other (e.g. `after:2024 before:2023`): nothing can match. */
  readonly impossible: boolean
}

/** A period of time: `[start, end)` in unix seconds. */
export interface Period {
  readonly start: number
  readonly end: number
}

const day = 86_400

const utc = (year: number, month0: number, date = 1): number => Date.UTC(year, month0, date) / 1000

const months = [
  ["january", "jan"],
  ["february", "feb"],
  ["march", "mar"],
  ["april", "apr"],
  ["may"],
  ["june", "jun"],
  ["july", "jul"],
  ["august", "aug"],
  ["september", "sep", "sept"],
  ["october", "oct"],
  ["november", "nov"],
  ["december", "dec"]
] as const

const monthIndex = new Map<string, number>(months.flatMap((names, i) => names.map((n) => [n, i] as const)))

/**
 * The period a date value names, in UTC, or undefined when it is not a date:
 * `YYYY-MM-DD`, `YYYY-MM`, `YYYY`, `today`, `yesterday`, or a month's name (the latest
 * such month that has begun: `during:december` in March is last December).
 */
export const parsePeriod = (value: string, now: Date): Period | undefined => {
  const v = value.toLowerCase()
  const today = utc(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())
  if (v === "today") return { start: today, end: today + day }
  if (v === "yesterday") return { start: today - day, end: today }
  const month = monthIndex.get(v)
  if (month !== undefined) {
    const year = month <= now.getUTCMonth() ? now.getUTCFullYear() : now.getUTCFullYear() - 1
    return { start: utc(year, month), end: utc(year, month + 1) }
  }
  const match = /^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$/.exec(v)
  if (match === null) return undefined
  const year = Number(match[1])
  if (year < 1970) return undefined
  if (match[2] === undefined) return { start: utc(year, 0), end: utc(year + 1, 0) }
  const m = Number(match[2]) - 1
  if (m < 0 || m > 11) return undefined
  if (match[3] === undefined) return { start: utc(year, m), end: utc(year, m + 1) }
  const d = Number(match[3])
  const start = utc(year, m, d)
  // Date.UTC rolls 2024-02-30 over into March: such a day does not exist.
  if (d < 1 || new Date(start * 1000).getUTCMonth() !== m) return undefined
  return { start, end: start + day }
}

/** `@alice`, `alice`, `me`, `<@U0ALI>`, `<@U0ALI|alice>`, `U0ALI`. */
export const parseUserRef = (value: string): UserRef | undefined => {
  const mention = /^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$/.exec(value)
  if (mention !== null) return { _tag: "UserId", id: mention[1] as string }
  if (/^[UW][A-Z0-9]{6,}$/.test(value)) return { _tag: "UserId", id: value }
  const handle = (value.startsWith("@") ? value.slice(1) : value).toLowerCase()
  if (handle === "me") return { _tag: "Me" }
  return /^[\p{L}\p{N}._-]+$/u.test(handle) ? { _tag: "Handle", handle } : undefined
}

/** `#general`, `general`, `<#C0ABC|general>`, `<#C0ABC>`, `C0ABC`/`D0ABC`, `@bob`, `<@U0BOB>`. */
export const parsePlace = (value: string): Place | undefined => {
  const link = /^<#([CDG][A-Z0-9]+)(?:\|[^>]*)?>$/.exec(value)
  if (link !== null) return { _tag: "ChannelId", id: link[1] as string }
  if (value.startsWith("@") || value.startsWith("<@")) {
    const user = parseUserRef(value)
    return user === undefined ? undefined : { _tag: "DirectMessage", user }
  }
  if (/^[CDG][A-Z0-9]{6,}$/.test(value)) return { _tag: "ChannelId", id: value }
  const name = (value.startsWith("#") ? value.slice(1) : value).toLowerCase()
  return /^[\p{L}\p{N}_-]+$/u.test(name) ? { _tag: "ChannelName", name } : undefined
}

// ---- tokens ---------------------------------------------------------------------------

type Token = { readonly _tag: "bare"; readonly text: string } | { readonly _tag: "quoted"; readonly text: string; readonly negated: boolean }

/** Splits on whitespace; `"…"` (also `-"…"`) is one token, unterminated at the end of the query. */
const tokenize = (query: string): Array<Token> => {
  const tokens: Array<Token> = []
  let i = 0
  const n = query.length
  while (i < n) {
    while (i < n && /\s/.test(query[i] as string)) i++
    if (i >= n) break
    const negated = query[i] === "-" && query[i + 1] === "\""
    if (query[i] === "\"" || negated) {
      const open = negated ? i + 1 : i
      const close = query.indexOf("\"", open + 1)
      const end = close === -1 ? n : close
      tokens.push({ _tag: "quoted", text: query.slice(open + 1, end), negated })
      i = end + 1
      continue
    }
    let j = i
    while (j < n && !/\s/.test(query[j] as string)) j++
    tokens.push({ _tag: "bare", text: query.slice(i, j) })
    i = j
  }
  return tokens
}

const normaliseSpace = (s: string) => s.trim().replace(/\s+/g, " ")

/** A bare token as a text term, or undefined when it has nothing to search. */
const word = (raw: string): Term | undefined => {
  let text = raw
  let negated = false
  if (text.startsWith("-") && text.length > 1) {
    negated = true
    text = text.slice(1)
  }
  let prefix = false
  if (text.endsWith("*")) {
    text = text.replace(/\*+$/, "")
    prefix = true
  }
  if (!/[\p{L}\p{N}]/u.test(text)) return undefined
  // A prefix needs something to be a prefix of: `a*` would match half the index.
  if (prefix && [...text].length < 2) prefix = false
  return { _tag: "Word", text, negated, prefix }
}

// ---- the parser -----------------------------------------------------------------------

export const parse = (query: string, now: Date = new Date()): SearchQuery => {
  const terms: Array<Term> = []
  const places: Array<Place> = []
  const authors: Array<UserRef> = []
  let from: number | undefined
  let to: number | undefined
  let hasLink = false
  let isThread = false

  const narrow = (start: number | undefined, end: number | undefined) => {
    if (start !== undefined) from = from === undefined ? start : Math.max(from, start)
    if (end !== undefined) to = to === undefined ? end : Math.min(to, end)
  }

  /** Applies a `key:value` filter; false when it is not one (then it is text). */
  const filter = (key: string, value: string): boolean => {
    switch (key) {
      case "in": {
        const place = parsePlace(value)
        if (place === undefined) return false
        places.push(place)
        return true
      }
      case "from": {
        const user = parseUserRef(value)
        if (user === undefined) return false
        authors.push(user)
        return true
      }
      case "before":
      case "after":
      case "on":
      case "during": {
        const period = parsePeriod(value, now)
        if (period === undefined) return false
        if (key === "before") narrow(undefined, period.start)
        else if (key === "after") narrow(period.end, undefined)
        else narrow(period.start, period.end)
        return true
      }
      case "has":
        if (value.toLowerCase() !== "link") return false
        hasLink = true
        return true
      case "is":
        if (value.toLowerCase() !== "thread") return false
        isThread = true
        return true
      default:
        return false
    }
  }

  for (const token of tokenize(query)) {
    if (token._tag === "quoted") {
      const text = normaliseSpace(token.text)
      if (/[\p{L}\p{N}]/u.test(text)) terms.push({ _tag: "Phrase", text, negated: token.negated })
      continue
    }
    const modifier = /^([a-zA-Z]+):(.+)$/.exec(token.text)
    if (modifier !== null && filter((modifier[1] as string).toLowerCase(), modifier[2] as string)) continue
    const term = word(token.text)
    if (term !== undefined) terms.push(term)
  }

  return {
    terms,
    in: places,
    from: authors,
    range: { from, to },
    hasLink,
    isThread,
    impossible: from !== undefined && to !== undefined && from >= to
  }
}

/** Whether the query asks for any text (else it lists what its filters match, newest first). */
export const hasText = (q: SearchQuery): boolean => q.terms.some((t) => !t.negated)

/** The `ts` string at the start of unix second `seconds` (for comparing with message ts). */
export const tsAt = (seconds: number): string => `${String(Math.max(0, Math.floor(seconds))).padStart(10, "0")}.000000`
