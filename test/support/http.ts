// Minimal Web API client for tests: JSON POST to /api/<method>, as Slack accepts.
// (Use @slack/web-api when a test is about SDK compatibility.)

/** A Slack-style Web API answer. */
export interface ApiResponse {
  readonly ok: boolean
  readonly error?: string
  readonly [key: string]: unknown
}

/** `http://host:port` (or `…/api`, `…/api/`) + method → the method's URL. */
export function apiUrl(baseUrl: string, method: string): string {
  const base = baseUrl.replace(/\/+$/, "").replace(/\/api$/, "")
  return `${base}/api/${method}`
}

export class ApiHttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
    method: string
  ) {
    super(`${method}: HTTP ${status} with a body that is not a Web API answer: ${body.slice(0, 300)}`)
    this.name = "ApiHttpError"
  }
}

/**
 * POST `args` as JSON to `<url>/api/<method>` (with `Authorization: Bearer <token>` when
 * given) and return the parsed answer, `ok: false` included. Throws only when the
 * answer is not JSON with a boolean `ok`.
 */
export async function postApi<T extends ApiResponse = ApiResponse>(
  url: string,
  method: string,
  args: Readonly<Record<string, unknown>> = {},
  token?: string
): Promise<T> {
  const headers: Record<string, string> = { "content-type": "application/json; charset=utf-8" }
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  const res = await fetch(apiUrl(url, method), { method: "POST", headers, body: JSON.stringify(args) })
  const text = await res.text()
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new ApiHttpError(res.status, text, method)
  }
  if (typeof parsed !== "object" || parsed === null || typeof (parsed as { ok?: unknown }).ok !== "boolean") {
    throw new ApiHttpError(res.status, text, method)
  }
  return parsed as T
}
