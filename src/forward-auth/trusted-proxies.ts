import { BlockList, isIPv4, isIPv6 } from 'node:net';

/**
 * The peers the forward-auth listener answers (`forwardAuth.trustedProxies`): CIDR blocks, IPv4
 * and IPv6. Only a connection from one of them may tell the gateway which request to judge (its
 * X-Forwarded-* / X-Original-* headers, or its path in prefix mode) and receive the JWT.
 */

/** One parsed entry of `trustedProxies`. */
export interface Cidr {
  family: 'ipv4' | 'ipv6';
  /** The network address as written (host bits are zero: checked). */
  network: string;
  prefix: number;
}

/**
 * Parses `a.b.c.d/n` or `x:x::x/n`; a bare address is a single host (/32 or /128). Returns the
 * block, or the reason it is not one, worded for `validate` (the caller adds the config path).
 */
export function parseCidr(text: string): Cidr | { problem: string } {
  const shown = JSON.stringify(text);
  const slash = text.indexOf('/');
  const address = slash === -1 ? text : text.slice(0, slash);
  const prefixText = slash === -1 ? undefined : text.slice(slash + 1);
  if (address.includes('%'))
    return { problem: `${shown}: IPv6 zone ids (%…) are not allowed; write the address alone` };
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : undefined;
  if (family === undefined) {
    return {
      problem: `${shown} is not a CIDR block: expected an IPv4 or IPv6 address with an optional /prefix length (e.g. 10.0.0.0/8, fd00::/8)`,
    };
  }
  const max = family === 'ipv4' ? 32 : 128;
  let prefix = max;
  if (prefixText !== undefined) {
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) {
      return {
        problem: `${shown}: the prefix length must be a whole number from 0 to ${max} for an ${family === 'ipv4' ? 'IPv4' : 'IPv6'} address`,
      };
    }
    prefix = Number(prefixText);
  }
  const bytes = addressBytes(address, family);
  const network = maskBytes(bytes, prefix);
  if (!network.every((b, i) => b === bytes[i])) {
    return {
      problem: `${shown} has bits set after the first ${prefix}: write the network address ${formatAddress(network, family)}/${prefix} (or /${max} for the single address)`,
    };
  }
  return { family, network: address, prefix };
}

/** A ready matcher over the configured blocks. */
export interface TrustedProxies {
  /** Whether a connection from `address` (as node reports it: IPv4, IPv6 or IPv4-mapped IPv6) is trusted. */
  trusts(address: string | undefined): boolean;
}

/**
 * Builds the matcher. IPv4-mapped IPv6 peers (`::ffff:10.1.2.3`, what a dual-stack listener on
 * `::` reports for IPv4 clients) match IPv4 blocks, as node's BlockList does.
 * @throws Error when an entry is not a CIDR block (the configuration is validated before).
 */
export function createTrustedProxies(entries: readonly string[]): TrustedProxies {
  const list = new BlockList();
  for (const entry of entries) {
    const cidr = parseCidr(entry);
    if ('problem' in cidr) throw new Error(`forwardAuth.trustedProxies: ${cidr.problem}`);
    list.addSubnet(cidr.network, cidr.prefix, cidr.family);
  }
  return {
    trusts(address) {
      if (address === undefined) return false;
      if (isIPv4(address)) return list.check(address, 'ipv4');
      if (isIPv6(address)) return list.check(address, 'ipv6');
      return false;
    },
  };
}

/** The 4 or 16 bytes of a valid address. */
function addressBytes(address: string, family: 'ipv4' | 'ipv6'): number[] {
  if (family === 'ipv4') return address.split('.').map(Number);
  let text = address;
  // An embedded IPv4 tail (::ffff:10.0.0.1) becomes two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4 !== null) {
    const [a, b, c, d] = v4[1]!.split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const groups = (s: string | undefined) => (s === undefined || s === '' ? [] : s.split(':'));
  const h = groups(head);
  const t = groups(tail);
  const all = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return all.flatMap((g) => {
    const n = Number.parseInt(g, 16);
    return [n >> 8, n & 0xff];
  });
}

function maskBytes(bytes: readonly number[], prefix: number): number[] {
  return bytes.map((b, i) => {
    const bits = Math.max(0, Math.min(8, prefix - i * 8));
    return b & ((0xff << (8 - bits)) & 0xff);
  });
}

function formatAddress(bytes: readonly number[], family: 'ipv4' | 'ipv6'): string {
  if (family === 'ipv4') return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  // The WHATWG URL parser writes IPv6 hosts in their canonical (RFC 5952) form.
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}
