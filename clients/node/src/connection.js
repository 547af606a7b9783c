// The one place that turns a Redis URL into an ioredis connection, mirroring icow/connection.py:
//
//   redis://[[user]:password@]host[:port][/db]        plain TCP (ioredis's own form)
//   rediss://...                                      TLS
//   redis+sentinel://[[user]:password@]host1[:port][,host2[:port]...]/service[/db][?options]
//   rediss+sentinel://...                             the same, over TLS
//
// Sentinel form: the hosts are the sentinels (port 26379 when left out), `service` the name they
// monitor, `db` the database (0); user and password are the primary's. Options, as in Python:
// sentinel_password, sentinel_username, socket_connect_timeout, socket_timeout (seconds),
// min_other_sentinels (accepted for the same URL everywhere; ioredis has no such check),
// ssl_ca_certs, ssl_certfile, ssl_keyfile (PEM files), ssl_cert_reqs (required | optional | none),
// sentinel_ssl (rediss+sentinel: TLS to the sentinels too, default true).
//
// After a failover ioredis asks the sentinels again on each reconnect; a connection to a primary
// that was demoted is dropped on its first READONLY reply. With failoverDetector, every connection
// also drops itself when a sentinel announces a new primary. Until the sentinels name a new primary
// commands fail, and the client turns that into BrokerUnavailable.

import { readFileSync } from 'node:fs';

import { Redis } from 'ioredis';

import { InvalidInput } from './errors.js';

export const SENTINEL_SCHEMES = ['redis+sentinel:', 'rediss+sentinel:'];
export const DEFAULT_SENTINEL_PORT = 26379;

const TRUE = ['1', 'true', 'yes', 'on'];
const FALSE = ['0', 'false', 'no', 'off'];
const TLS_OPTIONS = ['ssl_ca_certs', 'ssl_certfile', 'ssl_keyfile', 'ssl_cert_reqs'];
const FLOAT_OPTIONS = ['socket_connect_timeout', 'socket_timeout'];
const SENTINEL_OPTIONS = ['sentinel_password', 'sentinel_username', 'min_other_sentinels', 'sentinel_ssl'];
const KNOWN = new Set([...FLOAT_OPTIONS, ...TLS_OPTIONS, ...SENTINEL_OPTIONS]);
const CERT_REQS = ['required', 'optional', 'none'];

const schemeOf = (url) => {
  const m = /^([a-z][a-z0-9+.-]*:)\/\//i.exec(String(url));
  return m ? m[1].toLowerCase() : '';
};

export const isSentinel = (url) => SENTINEL_SCHEMES.includes(schemeOf(url));

/** The URL without its passwords (for logs and errors). */
export function redact(url) {
  const text = String(url);
  const m = /^([^:]+:\/\/)([^/?#]*)(.*)$/.exec(text);
  if (!m) return text;
  let [, scheme, netloc, rest] = m;
  const at = netloc.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = netloc.slice(0, at);
    if (userinfo.includes(':')) netloc = `${userinfo.split(':')[0]}:***${netloc.slice(at)}`;
  }
  rest = rest.replace(/([?&][^=&#]*password=)[^&#]*/gi, '$1***');
  return scheme + netloc + rest;
}

function decode(part, url) {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new InvalidInput(`bad percent-encoding in ${redact(url)}`);
  }
}

function hostPort(item, url) {
  let host;
  let port;
  if (item.startsWith('[')) {
    // [::1]:26379
    const end = item.indexOf(']');
    host = item.slice(1, end < 0 ? undefined : end);
    const rest = end < 0 ? '' : item.slice(end + 1);
    port = rest.startsWith(':') ? rest.slice(1) : '';
  } else {
    const colon = item.lastIndexOf(':');
    [host, port] = colon < 0 ? [item, ''] : [item.slice(0, colon), item.slice(colon + 1)];
  }
  if (!host) throw new InvalidInput(`empty sentinel host in ${redact(url)}`);
  if (port === '') return { host, port: DEFAULT_SENTINEL_PORT };
  if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    throw new InvalidInput(`bad sentinel port '${port}' in ${redact(url)}`);
  }
  return { host, port: Number(port) };
}

function flag(raw, name) {
  if (TRUE.includes(raw.toLowerCase())) return true;
  if (FALSE.includes(raw.toLowerCase())) return false;
  throw new InvalidInput(`${name}=${raw}: use true or false`);
}

function seconds(raw, name, url) {
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || value < 0) {
    throw new InvalidInput(`bad number ${name}=${raw} in ${redact(url)}`);
  }
  return value;
}

/**
 * Parse a `redis+sentinel://` / `rediss+sentinel://` URL (no I/O); InvalidInput if malformed.
 * Returns {sentinels: [{host, port}], service, db, username, password, tls, sentinelTls,
 * sentinelUsername, sentinelPassword, minOtherSentinels, timeouts: {socket_*: s}, ssl: {ssl_*: v}}.
 */
export function parseSentinel(url) {
  const scheme = schemeOf(url);
  if (!SENTINEL_SCHEMES.includes(scheme)) throw new InvalidInput(`not a Sentinel URL: ${redact(url)}`);
  const afterScheme = String(url).slice(scheme.length + 2);
  const hashless = afterScheme.split('#')[0];
  const q = hashless.indexOf('?');
  const [beforeQuery, query] = q < 0 ? [hashless, ''] : [hashless.slice(0, q), hashless.slice(q + 1)];
  const slash = beforeQuery.indexOf('/');
  const [netloc, path] = slash < 0 ? [beforeQuery, ''] : [beforeQuery.slice(0, slash), beforeQuery.slice(slash)];
  const at = netloc.lastIndexOf('@');
  const [userinfo, hosts] = at < 0 ? ['', netloc] : [netloc.slice(0, at), netloc.slice(at + 1)];
  let username = null;
  let password = null;
  if (userinfo) {
    const colon = userinfo.indexOf(':');
    username = decode(colon < 0 ? userinfo : userinfo.slice(0, colon), url) || null;
    password = colon < 0 ? null : decode(userinfo.slice(colon + 1), url);
  }
  const sentinels = hosts
    .split(',')
    .filter((h) => h)
    .map((h) => hostPort(h, url));
  if (sentinels.length === 0) throw new InvalidInput(`no sentinel hosts in ${redact(url)}`);
  const parts = path.split('/').filter((p) => p);
  if (parts.length === 0 || parts.length > 2) throw new InvalidInput(`${redact(url)}: the path must be /<service>[/<db>]`);
  if (parts.length === 2 && !/^\d+$/.test(parts[1])) {
    throw new InvalidInput(`${redact(url)}: database '${parts[1]}' is not a number`);
  }
  const options = {};
  for (const [k, v] of new URLSearchParams(query)) if (v !== '') options[k] = v; // the last one wins
  const unknown = Object.keys(options)
    .filter((k) => !KNOWN.has(k))
    .sort();
  if (unknown.length > 0) throw new InvalidInput(`unknown option(s) ${unknown.join(', ')} in ${redact(url)}`);
  const timeouts = {};
  for (const k of FLOAT_OPTIONS) if (k in options) timeouts[k] = seconds(options[k], k, url);
  const minOther = options.min_other_sentinels ?? '0';
  if (!/^\d+$/.test(minOther)) throw new InvalidInput(`bad number min_other_sentinels=${minOther} in ${redact(url)}`);
  const ssl = {};
  for (const k of TLS_OPTIONS) if (k in options) ssl[k] = options[k];
  if (ssl.ssl_cert_reqs !== undefined && !CERT_REQS.includes(ssl.ssl_cert_reqs.toLowerCase())) {
    throw new InvalidInput(`ssl_cert_reqs=${ssl.ssl_cert_reqs}: use ${CERT_REQS.join(', ')}`);
  }
  const tls = scheme === 'rediss+sentinel:';
  return {
    sentinels,
    service: decode(parts[0], url),
    db: parts.length === 2 ? Number(parts[1]) : 0,
    username,
    password,
    tls,
    sentinelTls: tls && flag(options.sentinel_ssl ?? 'true', 'sentinel_ssl'),
    sentinelUsername: options.sentinel_username ?? null,
    sentinelPassword: options.sentinel_password ?? null,
    minOtherSentinels: Number(minOther),
    timeouts,
    ssl,
  };
}

/** Node TLS options from the URL's ssl_* options (the PEM files are read here). */
function tlsOptions(ssl) {
  const out = {};
  if (ssl.ssl_ca_certs) out.ca = readFileSync(ssl.ssl_ca_certs);
  if (ssl.ssl_certfile) out.cert = readFileSync(ssl.ssl_certfile);
  if (ssl.ssl_keyfile) out.key = readFileSync(ssl.ssl_keyfile);
  // Python's 'optional' verifies a server's certificate like 'required' does.
  if ((ssl.ssl_cert_reqs ?? 'required').toLowerCase() === 'none') out.rejectUnauthorized = false;
  return out;
}

/**
 * ioredis options for a parsed Sentinel URL: `{sentinels, name, db, username, password,
 * sentinelUsername, sentinelPassword, connectTimeout, commandTimeout, tls, sentinelTLS, ...}`.
 * `connectTimeoutMs` / `commandTimeoutMs` are the caller's; the URL's socket_* options win.
 */
export function sentinelOptions(target, { connectTimeoutMs = 2000, commandTimeoutMs = undefined } = {}) {
  const connectTimeout =
    target.timeouts.socket_connect_timeout !== undefined ? target.timeouts.socket_connect_timeout * 1000 : connectTimeoutMs;
  const commandTimeout = target.timeouts.socket_timeout !== undefined ? target.timeouts.socket_timeout * 1000 : commandTimeoutMs;
  const out = {
    sentinels: target.sentinels.map(({ host, port }) => ({ host, port })),
    name: target.service,
    role: 'master',
    db: target.db,
    connectTimeout,
    sentinelCommandTimeout: commandTimeout ?? connectTimeout,
    sentinelRetryStrategy: (times) => Math.min(times * 100, 1000),
    // A primary demoted by a failover answers writes with READONLY: reconnect, ask the sentinels.
    reconnectOnError: (err) => (/^READONLY/.test(err.message) ? 1 : false),
    // Drop the connection when a sentinel announces a new primary (+switch-master): one to an
    // old primary that came back still a primary (frozen, then resumed) is not used; writes
    // there would be lost at its conversion (test/sentinel.test.js, as icow/connection.py).
    failoverDetector: true,
  };
  if (commandTimeout !== undefined) out.commandTimeout = commandTimeout;
  if (target.username !== null) out.username = target.username;
  if (target.password !== null) out.password = target.password;
  if (target.sentinelUsername !== null) out.sentinelUsername = target.sentinelUsername;
  if (target.sentinelPassword !== null) out.sentinelPassword = target.sentinelPassword;
  if (target.tls) {
    out.tls = tlsOptions(target.ssl);
    out.enableTLSForSentinelMode = true; // ioredis speaks TLS to the primary only with this
  }
  if (target.sentinelTls) out.sentinelTLS = tlsOptions(target.ssl);
  return out;
}

/**
 * An ioredis client for any URL form above. `base` are ioredis options (the client's retry and
 * timeout settings); `connectTimeoutMs` / `commandTimeoutMs` bound connecting and each command;
 * `redisOptions` (the caller's) win over everything.
 */
export function connect(url, { base = {}, connectTimeoutMs = 2000, commandTimeoutMs = undefined, redisOptions = {} } = {}) {
  if (!isSentinel(url)) {
    const timeouts = { connectTimeout: connectTimeoutMs };
    if (commandTimeoutMs !== undefined) timeouts.commandTimeout = commandTimeoutMs;
    return new Redis(url, { ...base, ...timeouts, ...redisOptions });
  }
  const options = sentinelOptions(parseSentinel(url), { connectTimeoutMs, commandTimeoutMs });
  return new Redis({ ...base, ...options, ...redisOptions });
}
