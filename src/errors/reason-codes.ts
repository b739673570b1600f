/** Stable reason codes (SPEC §5): one union feeds logs, metrics and tests. */
export const REASON_CODES = [
  'token_missing',
  'token_malformed',
  'token_inactive',
  'jwt_invalid',
  'scope_missing',
  'route_not_found',
  'method_not_allowed',
  'path_rejected',
  'token_service_unavailable',
  'upstream_unavailable',
  'upstream_timeout',
  /** Forward-auth listener: the connecting peer is not in forwardAuth.trustedProxies (403). */
  'proxy_untrusted',
  'allowed',
] as const;

/** A decision's reason, as written in access logs and metrics. */
export type ReasonCode = (typeof REASON_CODES)[number];
