import { describe, expect, it } from 'vitest';
import { checkConfig } from '../../../src/config/parse-config.ts';
import { createTrustedProxies, parseCidr } from '../../../src/forward-auth/trusted-proxies.ts';

describe('parseCidr', () => {
  it.each([
    ['10.0.0.0/8', { family: 'ipv4', network: '10.0.0.0', prefix: 8 }],
    ['127.0.0.1', { family: 'ipv4', network: '127.0.0.1', prefix: 32 }],
    ['0.0.0.0/0', { family: 'ipv4', network: '0.0.0.0', prefix: 0 }],
    ['fd00::/8', { family: 'ipv6', network: 'fd00::', prefix: 8 }],
    ['::1', { family: 'ipv6', network: '::1', prefix: 128 }],
    ['::ffff:10.0.0.0/104', { family: 'ipv6', network: '::ffff:10.0.0.0', prefix: 104 }],
    ['2001:db8:0:0:0:0:0:0/32', { family: 'ipv6', network: '2001:db8:0:0:0:0:0:0', prefix: 32 }],
  ])('reads %s', (text, expected) => {
    expect(parseCidr(text)).toEqual(expected);
  });

  it.each([
    ['10.0.0.1/8', '"10.0.0.1/8" has bits set after the first 8: write the network address 10.0.0.0/8'],
    ['192.168.1.77/24', 'write the network address 192.168.1.0/24 (or /32 for the single address)'],
    ['fd00::1/8', 'write the network address fd00::/8 (or /128 for the single address)'],
    ['2001:db8::ff:1/112', 'write the network address 2001:db8::ff:0/112'],
    ['2001:db8::1:0/100', 'write the network address 2001:db8::/100'],
    [
      '10.0.0.0/33',
      '"10.0.0.0/33": the prefix length must be a whole number from 0 to 32 for an IPv4 address',
    ],
    ['::/129', 'from 0 to 128 for an IPv6 address'],
    ['10.0.0.0/', 'the prefix length must be a whole number'],
    ['10.0.0.0/-1', 'the prefix length must be a whole number'],
    ['10.0.0.0/8/8', 'the prefix length must be a whole number'],
    ['fe80::1%eth0', 'IPv6 zone ids (%…) are not allowed'],
    ['10.0.0/8', 'is not a CIDR block'],
    ['010.0.0.0/8', 'is not a CIDR block'],
    ['localhost', 'is not a CIDR block'],
    ['', 'is not a CIDR block'],
  ])('refuses %j', (text, message) => {
    const r = parseCidr(text);
    expect(r).toHaveProperty('problem');
    expect((r as { problem: string }).problem).toContain(message);
  });
});

describe('createTrustedProxies', () => {
  const trusted = createTrustedProxies(['127.0.0.1/32', '10.0.0.0/8', 'fd00::/8', '::1']);

  it.each([
    ['127.0.0.1', true],
    ['127.0.0.2', false],
    ['10.255.1.2', true],
    ['11.0.0.1', false],
    ['::1', true],
    ['::2', false],
    ['fd12:3456::1', true],
    ['fe80::1', false],
    // What a dual-stack listener (on ::) reports for IPv4 peers.
    ['::ffff:127.0.0.1', true],
    ['::ffff:10.1.2.3', true],
    ['::ffff:7f00:1', true],
    ['::ffff:192.168.0.1', false],
    // Not an address at all (a Unix socket peer, a missing socket).
    ['', false],
    ['not-an-ip', false],
    [undefined, false],
  ])('%s → %s', (address, expected) => {
    expect(trusted.trusts(address)).toBe(expected);
  });

  it('an IPv4-mapped IPv6 block trusts the IPv4 peers it maps', () => {
    const mapped = createTrustedProxies(['::ffff:10.0.0.0/104']);
    expect(mapped.trusts('10.9.8.7')).toBe(true);
    expect(mapped.trusts('::ffff:10.9.8.7')).toBe(true);
    expect(mapped.trusts('11.0.0.1')).toBe(false);
  });

  it('an IPv4 block does not trust IPv6 peers outside the mapped range', () => {
    const v4 = createTrustedProxies(['0.0.0.0/0']);
    expect(v4.trusts('8.8.8.8')).toBe(true);
    expect(v4.trusts('2001:db8::1')).toBe(false);
  });

  it('throws on an entry that is not a block (the configuration is validated first)', () => {
    expect(() => createTrustedProxies(['10.0.0.1/8'])).toThrow(
      /forwardAuth\.trustedProxies: .*10\.0\.0\.0\/8/,
    );
  });
});

describe('forwardAuth in the configuration', () => {
  const base = {
    tokenService: { issuer: 'https://login.example.com', clientId: 'gw', clientSecret: '${S}' },
    routes: [
      { name: 'api', match: { pathPrefix: '/api' }, upstream: 'http://api.internal:3000', scopes: ['read'] },
    ],
  };
  const problems = (forwardAuth: unknown) =>
    checkConfig({ ...base, forwardAuth }).problems.map((p) => `${p.path}: ${p.message}`);

  it('has defaults: loopback listener on 8081, /auth, loopback proxies only, no claim headers', () => {
    const { config } = checkConfig({ ...base, forwardAuth: {} });
    expect(config?.forwardAuth).toEqual({
      host: '127.0.0.1',
      port: 8081,
      path: '/auth',
      prefixMode: false,
      trustedProxies: ['127.0.0.0/8', '::1/128'],
      claimHeaders: [],
    });
  });

  it('is off when absent', () => {
    expect(checkConfig(base).config?.forwardAuth).toBeUndefined();
  });

  it('names each bad CIDR by its path', () => {
    expect(
      problems({ trustedProxies: ['10.0.0.0/8', '10.0.0.1/8', '1.2.3.4/33', 'fe80::1%eth0', 'nope'] }),
    ).toEqual([
      'forwardAuth.trustedProxies[1]: "10.0.0.1/8" has bits set after the first 8: write the network address 10.0.0.0/8 (or /32 for the single address)',
      'forwardAuth.trustedProxies[2]: "1.2.3.4/33": the prefix length must be a whole number from 0 to 32 for an IPv4 address',
      'forwardAuth.trustedProxies[3]: "fe80::1%eth0": IPv6 zone ids (%…) are not allowed; write the address alone',
      'forwardAuth.trustedProxies[4]: "nope" is not a CIDR block: expected an IPv4 or IPv6 address with an optional /prefix length (e.g. 10.0.0.0/8, fd00::/8)',
    ]);
  });

  it('refuses an empty trustedProxies list, unknown keys, a bad path and bad claim headers', () => {
    expect(problems({ trustedProxies: [] })).toEqual([
      'forwardAuth.trustedProxies: must list at least one CIDR block (the listener answers these peers only)',
    ]);
    expect(problems({ TrustedProxies: ['10.0.0.0/8'] })).toEqual([
      'forwardAuth: unknown key "TrustedProxies" (did you mean "trustedProxies"?)',
    ]);
    for (const path of ['auth', '/auth/', '/a//b', '/a/../b', '/a%2Fb', '/']) {
      expect(problems({ path })).toEqual([
        'forwardAuth.path: must be an absolute path like /auth: no trailing /, no empty, "." or ".." segments, no percent-encoding',
      ]);
    }
    expect(
      problems({
        claimHeaders: [
          { header: 'X-Auth-Subject', claim: 'sub' },
          { header: 'X-Auth-Client', claim: 'client_id' },
          { header: 'Authorization', claim: 'sub' },
          { header: 'X-Forwarded-User', claim: 'sub' },
          { header: 'X-Envoy-Auth-Headers-To-Remove', claim: 'sub' },
          { header: 'bad name', claim: 'sub' },
          { header: 'X-Empty', claim: '' },
          { header: 'X-Typo', clam: 'sub' },
        ],
      }),
    ).toEqual([
      'forwardAuth.claimHeaders[2].header: is a header the gateway or the ingress sets itself; choose another name',
      'forwardAuth.claimHeaders[3].header: is a header the gateway or the ingress sets itself; choose another name',
      'forwardAuth.claimHeaders[4].header: is a header the gateway or the ingress sets itself; choose another name',
      "forwardAuth.claimHeaders[5].header: must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
      'forwardAuth.claimHeaders[6].claim: must not be empty',
      'forwardAuth.claimHeaders[7].claim: is required',
      'forwardAuth.claimHeaders[7]: unknown key "clam" (did you mean "claim"?)',
    ]);
    // Reported once every entry is well-formed (a list-level rule).
    expect(
      problems({
        claimHeaders: [
          { header: 'X-Auth-Subject', claim: 'sub' },
          { header: 'X-Auth-Client', claim: 'client_id' },
          { header: 'x-auth-subject', claim: 'sub' },
        ],
      }),
    ).toEqual([
      'forwardAuth.claimHeaders[2].header: is the same header as claimHeaders[0] (header names are case-insensitive)',
    ]);
  });
});
