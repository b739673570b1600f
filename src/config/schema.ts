import { z } from 'zod';
import { parseCidr } from '../forward-auth/trusted-proxies.ts';

/**
 * The one definition of the configuration file (SPEC §3). The TypeScript type, the validation
 * messages and the shipped `config/gateway.schema.json` all come from here.
 * Every object is strict: unknown keys are errors at every level.
 */

/** Whole-string numbers produced by `${ENV}` substitution become numbers ("8080" → 8080). */
const int = (min: number, max: number) =>
  z.preprocess(
    (v) => (typeof v === 'string' && /^-?\d+$/.test(v.trim()) ? Number(v.trim()) : v),
    z.number().int().min(min).max(max),
  );
/** `"true"`/`"false"` from `${ENV}` substitution become booleans. */
const bool = () => z.preprocess((v) => (v === 'true' ? true : v === 'false' ? false : v), z.boolean());

const httpUrl = z.string().refine(
  (s) => {
    try {
      const u = new URL(s);
      return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== '';
    } catch {
      return false;
    }
  },
  { message: 'must be an absolute http(s) URL' },
);

export const HTTP_METHODS = [
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'PATCH',
  'DELETE',
  'OPTIONS',
  'TRACE',
  'CONNECT',
] as const;
export type HttpMethod = (typeof HTTP_METHODS)[number];

const scopeName = z
  .string()
  .regex(
    /^[\x21\x23-\x5B\x5D-\x7E]+$/,
    'must be a scope token (RFC 6749 §3.3: no spaces, quotes or backslashes)',
  );
const scopeList = z.array(scopeName).min(1, 'must list at least one scope');

export const ScopeRuleSchema = z.union([
  scopeList,
  z.strictObject({ anyOf: scopeList }),
  z.strictObject({ allOf: scopeList }),
]);

const AlgorithmSchema = z.enum([
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
]);

export const RouteSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9-]+$/, 'must match [a-z0-9-]+'),
  match: z.strictObject({
    pathPrefix: z
      .string()
      .regex(/^\/[\x21-\x7E]*$/, 'must start with / and contain only visible ASCII characters'),
    methods: z
      .array(z.preprocess((v) => (typeof v === 'string' ? v.toUpperCase() : v), z.enum(HTTP_METHODS)))
      .min(1, 'must list at least one method; omit the key to allow all')
      .optional(),
  }),
  upstream: httpUrl,
  stripPrefix: bool().default(false),
  scopes: ScopeRuleSchema.optional(),
  auth: z.enum(['none']).optional(),
  /** Upstream response timeout for this route (connect timeout is the smaller of this and 5 s). */
  timeoutMs: int(1, 3_600_000).optional(),
  /** Accept a JWT-shaped client token as a phantom token (SPEC §4 stage 3). */
  acceptJwt: bool().default(false),
});

/** Response headers the forward-auth listener sets itself, or that mean something else to an ingress. */
const RESERVED_CLAIM_HEADERS = new Set([
  'authorization',
  'cache-control',
  'connection',
  'content-length',
  'content-type',
  'date',
  'forwarded',
  'host',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'retry-after',
  'server',
  'set-cookie',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'www-authenticate',
  'x-request-id',
]);

/** `forwardAuth`: the forward-auth listener for an existing ingress (docs/forward-auth.md). */
export const ForwardAuthSchema = z.strictObject({
  host: z.string().min(1).default('127.0.0.1'),
  /** Its own listener; 0 = any free port (the address is in the "listening" log line). */
  port: int(0, 65535).default(8081),
  /** The exact path answered (any method); with prefixMode also `<path>/<original path>`. */
  path: z
    .string()
    .regex(
      /^(?:\/(?!\.\.?(?:\/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+$/,
      'must be an absolute path like /auth: no trailing /, no empty, "." or ".." segments, no percent-encoding',
    )
    .default('/auth'),
  /**
   * Envoy ext_authz HTTP (path_prefix = path): a call to `<path>/<original path>` is judged with its
   * own method and the rest of its path (and query) as the original request; headers are not read.
   */
  prefixMode: bool().default(false),
  /**
   * CIDR blocks (IPv4, IPv6; a bare address is one host) of the proxies allowed to call this
   * listener; every other peer gets 403. Default: loopback only.
   */
  trustedProxies: z
    .array(
      z.string().superRefine((entry, rc) => {
        const parsed = parseCidr(entry);
        if ('problem' in parsed) rc.addIssue({ code: 'custom', message: parsed.problem });
      }),
    )
    .min(1, 'must list at least one CIDR block (the listener answers these peers only)')
    .default(['127.0.0.0/8', '::1/128']),
  /**
   * Response headers filled from JWT claims on success (`{ header: X-Auth-Subject, claim: sub }`):
   * string and number claims, arrays joined by a space; an absent claim gives no header.
   */
  claimHeaders: z
    .array(
      z.strictObject({
        header: z
          .string()
          .regex(
            /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/,
            "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
          )
          .refine((name) => {
            const lower = name.toLowerCase();
            return !RESERVED_CLAIM_HEADERS.has(lower) && !/^x-(?:forwarded|original|envoy)-/.test(lower);
          }, 'is a header the gateway or the ingress sets itself; choose another name'),
        /** A top-level claim name (`sub`, `client_id`, `https://example.com/roles`). */
        claim: z.string().min(1),
      }),
    )
    .superRefine((entries, rc) => {
      const seen = new Map<string, number>();
      entries.forEach(({ header }, i) => {
        const first = seen.get(header.toLowerCase());
        if (first !== undefined)
          rc.addIssue({
            code: 'custom',
            path: [i, 'header'],
            message: `is the same header as claimHeaders[${first}] (header names are case-insensitive)`,
          });
        else seen.set(header.toLowerCase(), i);
      });
    })
    .default([]),
});

export const ConfigSchema = z.strictObject({
  realm: z
    .string()
    .regex(/^[\x20\x21\x23-\x5B\x5D-\x7E]*$/, 'must be printable ASCII without quotes or backslashes')
    .default('api'),
  listen: z
    .strictObject({
      host: z.string().min(1).default('0.0.0.0'),
      port: int(0, 65535).default(8080),
      trustProxyHeaders: bool().default(false),
      /**
       * Worker processes (node:cluster) sharing the listeners: `auto` = one per CPU, default 1 (no
       * cluster). Each worker has its own L1; Redis, when configured, is shared.
       */
      workers: z.union([z.literal('auto'), int(1, 64)]).default(1),
      /**
       * Open client connections the public listener holds at once (per process: per worker with
       * `listen.workers`); connections beyond it are accepted and closed at once. Absent: unlimited.
       * Applied on reload.
       */
      maxConnections: int(1, 1_000_000).optional(),
      tls: z
        .strictObject({
          certFile: z.string().min(1),
          keyFile: z.string().min(1),
          clientCaFile: z.string().min(1).optional(),
        })
        .optional(),
    })
    .prefault({}),
  admin: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: int(0, 65535).default(9090),
      /** Bearer token for POST /cache/purge (compared in constant time); absent → endpoint answers 404. */
      token: z.string().min(16, 'must be at least 16 characters').optional(),
    })
    .prefault({}),
  tokenService: z.strictObject({
    issuer: httpUrl,
    introspectionEndpoint: httpUrl.optional(),
    clientId: z.string().min(1),
    clientSecret: z.string().min(1).optional(),
    clientAuth: z
      .enum(['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth'])
      .default('client_secret_basic'),
    mode: z.enum(['accept-jwt', 'claim', 'mint']).default('accept-jwt'),
    jwtClaim: z.string().min(1).optional(),
    /** private_key_jwt: the client's private key, PEM (PKCS#8) or a JWK JSON file. Reloaded on SIGHUP. */
    privateKeyFile: z.string().min(1).optional(),
    /** private_key_jwt: the assertion's JWS algorithm; default from the key (`alg` of a JWK, else by key type). */
    privateKeyAlg: AlgorithmSchema.optional(),
    /** tls_client_auth: the client certificate (PEM, chain allowed) and its key. Reloaded on SIGHUP. */
    tlsCertFile: z.string().min(1).optional(),
    tlsKeyFile: z.string().min(1).optional(),
    /** PEM CA bundle trusted for the token service's TLS (discovery, JWKS, introspection) instead of the system CAs. */
    caFile: z.string().min(1).optional(),
    /** mode claim: the Accept header of the introspection request (Keycloak returns its `jwt` member only for application/jwt). */
    introspectionAccept: z.enum(['application/json', 'application/jwt']).default('application/json'),
    /** mode mint: RFC 7662 JSON answers, or RFC 9701 signed JWT answers (`application/token-introspection+jwt`). */
    introspectionFormat: z.enum(['json', 'jwt']).default('json'),
    timeoutMs: int(50, 60_000).default(2000),
    requireAtStartup: bool().default(false),
  }),
  jwt: z
    .strictObject({
      algorithms: z.array(AlgorithmSchema).min(1).default(['ES256', 'EdDSA', 'RS256', 'PS256']),
      issuer: z.string().min(1).optional(),
      audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
      jwksUri: httpUrl.optional(),
      /** Expected `typ` header; when absent, JWT / at+jwt (optionally `application/`-prefixed) or none. */
      typ: z.string().min(1).optional(),
      clockSkewSeconds: int(0, 60).default(30),
      mint: z
        .strictObject({
          issuer: z.string().min(1),
          signingKeysFile: z.string().min(1),
          lifetimeSeconds: int(1, 86_400).default(300),
          audience: z.string().min(1).optional(),
          /** A key that becomes first (active) in the file signs only after it was published this long (SIGHUP reload). */
          publishBeforeSignSeconds: int(0, 86_400).default(600),
          /** Also serve the public JWKS at this path on the public listener (no token needed). */
          jwksPath: z
            .string()
            .regex(/^\/[\x21-\x7E]*$/, 'must start with / and contain only visible ASCII characters')
            .optional(),
        })
        .optional(),
    })
    .prefault({}),
  cache: z
    .strictObject({
      redis: z
        .strictObject({
          // Exactly one of url (standalone), sentinels (+ name) or cluster (parse-config.ts).
          /** Standalone Redis; user and password (ACL) go in the URL: `rediss://user:pass@host:6379/0`. */
          url: z
            .string()
            .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
            .optional(),
          /** Redis Sentinel: the sentinels to ask for the current master of `name`. */
          sentinels: z
            .array(z.strictObject({ host: z.string().min(1), port: int(1, 65535) }))
            .min(1)
            .optional(),
          /** Master group name (`sentinel monitor <name> …`); sentinels only. */
          name: z.string().min(1).optional(),
          /** Redis Cluster: seed nodes; the rest of the cluster is discovered from them. */
          cluster: z
            .array(z.strictObject({ host: z.string().min(1), port: int(1, 65535) }))
            .min(1)
            .optional(),
          /** ACL user and password of the Redis nodes (sentinels/cluster; with url they are in the URL). */
          username: z.string().min(1).optional(),
          password: z.string().min(1).optional(),
          /** ACL user and password of the sentinels themselves; sentinels only. */
          sentinelUsername: z.string().min(1).optional(),
          sentinelPassword: z.string().min(1).optional(),
          /** TLS to every node (and to the sentinels); sentinels/cluster (with url: rediss://). */
          tls: bool().optional(),
          /** PEM CA bundle trusted for TLS instead of the system CAs (a private CA). */
          caFile: z.string().min(1).optional(),
          /** Logical database (default 0); url (instead of a /N path) or sentinels, never cluster. */
          db: int(0, 65535).optional(),
          keyPrefix: z.string().default('phantom:'),
          commandTimeoutMs: int(1, 10_000).default(50),
        })
        .optional(),
      memory: z.strictObject({ maxEntries: int(1, 10_000_000).default(10_000) }).prefault({}),
      maxTtlSeconds: int(1, 86_400).default(900),
      negativeTtlSeconds: int(0, 3600).default(5),
      revocation: z
        .strictObject({
          /** Pub/sub channel on which replicas announce purges and finished introspections; default `<keyPrefix>events`. */
          channel: z.string().min(1).optional(),
        })
        .prefault({}),
    })
    .prefault({}),
  /** Shared Signals Framework receiver (POST /ssf/events on the admin port); absent → 404. */
  ssf: z
    .strictObject({
      /** The transmitter's `iss`, exact match. */
      issuer: z.string().min(1),
      /** The transmitter's JWKS (SET signing keys). */
      jwksUri: httpUrl,
      /** Our receiver audience: a SET's `aud` must name one of these. */
      audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
      algorithms: z.array(AlgorithmSchema).min(1).default(['ES256', 'RS256', 'PS256', 'EdDSA']),
      /** SETs whose `iat` is older (± jwt.clockSkewSeconds) are refused; seen `jti`s are kept as long. */
      maxAgeSeconds: int(1, 86_400).default(300),
      /** The exact `Authorization` value the transmitter must send (RFC 8935 §2.2), constant-time compare. */
      authorizationHeader: z.string().min(16, 'must be at least 16 characters').optional(),
    })
    .optional(),
  /** Forward-auth listener for an existing ingress (nginx auth_request, Traefik, Envoy); absent → off. */
  forwardAuth: ForwardAuthSchema.optional(),
  routes: z.array(RouteSchema).min(1, 'must define at least one route'),
  shutdownGraceSeconds: int(0, 3600).default(10),
  logging: z
    .strictObject({
      /** Add the JWT's `sub` claim to every access line (personal data: off by default). */
      includeSubject: bool().default(false),
    })
    .prefault({}),
});

/** The configuration as written (before defaults): what the JSON Schema describes. */
export type ConfigInput = z.input<typeof ConfigSchema>;
/** The validated configuration with defaults applied. Frozen after parsing. */
export type Config = z.output<typeof ConfigSchema>;
export type RouteConfig = Config['routes'][number];
export type ScopeRule = z.output<typeof ScopeRuleSchema>;
