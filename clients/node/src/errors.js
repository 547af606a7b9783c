// The error tree of ICOW, mirroring icow/errors.py (docs/PROTOCOL.md, "Errors").
//
//   IcowError
//   ├── InvalidInput                 bad input caught before anything reaches Redis
//   │   └── PayloadTooLarge          a tensor or job over the size caps
//   ├── BrokerUnavailable            Redis unreachable or the connection broke
//   │   └── NotDurable               queued on the primary, no replica acknowledged it (jobIds, jobs)
//   ├── PermissionDenied             the Redis ACL user may not do this (NOPERM); retrying will not help
//   ├── QueueFull                    the model's backlog is at its limit; nothing was queued
//   ├── JobTimeout                   no result within the caller's timeout (the job may still finish)
//   ├── NotFound                     unknown model, or nothing published for it
//   │   └── JobNotFound              unknown job id, or its result has expired
//   └── RemoteError                  the job failed on a worker; carries remoteType, message, jobId
//       ├── InvalidJob               the worker refused the job's envelope or inputs
//       ├── ModelNotFound            no such model or version
//       ├── JobExpired               the job's deadline passed before it ran
//       ├── JobCancelled             the job was cancelled (revoked) before it ran
//       └── InternalError            an unexpected failure inside the worker
//   ClientClosed (under IcowError)   a call on a client after its close()
//   NoResultYet (under IcowError)    job.info() before the handle has seen the job's result
//   JobIdConflict (under InvalidJob) a custom job id already used by a job with other inputs

export class IcowError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class InvalidInput extends IcowError {}
export class PayloadTooLarge extends InvalidInput {}
export class BrokerUnavailable extends IcowError {}

/**
 * A durable submit was queued on the primary, but no replica acknowledged it within the WAIT.
 * The jobs ARE queued and will normally run: re-attach (`jobs`, `jobIds`), never resubmit them
 * under new ids. As icow.errors.NotDurable.
 */
export class NotDurable extends BrokerUnavailable {
  constructor(message, { jobIds = [], jobs = [], acknowledged = 0, replicas = 1 } = {}) {
    super(message);
    this.jobIds = jobIds;
    this.jobs = jobs;
    this.acknowledged = acknowledged;
    this.replicas = replicas;
  }
}

/** Redis refused a command or key for this ACL user (NOPERM); see `icow admin acl`. */
export class PermissionDenied extends IcowError {}

/** The model's queue already holds its maximum backlog (icow:limits); the job was not queued. */
export class QueueFull extends IcowError {
  constructor(message, { model = '', depth = 0, limit = 0 } = {}) {
    super(message);
    this.model = model;
    this.depth = depth;
    this.limit = limit;
  }
}
export class JobTimeout extends IcowError {}
export class NotFound extends IcowError {}
export class JobNotFound extends NotFound {}

export class RemoteError extends IcowError {
  constructor(message, { jobId = null, remoteType = null } = {}) {
    super(`${remoteType ?? new.target.remoteType}: ${message}`);
    this.message = message;
    this.jobId = jobId;
    this.remoteType = remoteType ?? new.target.remoteType;
  }

  static remoteType = 'RemoteError';

  toString() {
    return `${this.name}: ${this.remoteType}: ${this.message}`;
  }
}

export class InvalidJob extends RemoteError {
  static remoteType = 'InvalidJob';
}
export class ModelNotFound extends RemoteError {
  static remoteType = 'ModelNotFound';
}
export class JobExpired extends RemoteError {
  static remoteType = 'JobExpired';
}
export class JobCancelled extends RemoteError {
  static remoteType = 'JobCancelled';
}
export class InternalError extends RemoteError {
  static remoteType = 'InternalError';
}

/** A call on a Client after its close(): make a new client. */
export class ClientClosed extends IcowError {}
/** job.info() before the handle has seen the job's result: await job.result() first. */
export class NoResultYet extends IcowError {}
/** The custom job id was already used by a job with other inputs (docs/PROTOCOL.md 8.4): not queued. */
export class JobIdConflict extends InvalidJob {
  static remoteType = 'JobIdConflict';
}

export const REMOTE_ERRORS = Object.freeze(
  Object.fromEntries(
    [InvalidJob, ModelNotFound, JobExpired, JobCancelled, InternalError, JobIdConflict].map((c) => [c.remoteType, c]),
  ),
);

/** The error for a failure result: a known exc_type maps to its class, others stay RemoteError. */
export function remoteError(remoteType, message, jobId = null) {
  const Cls = REMOTE_ERRORS[remoteType] ?? RemoteError;
  return new Cls(message, { jobId, remoteType });
}
