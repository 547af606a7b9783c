// The error tree of ICOW, mirroring icow/errors.py (docs/PROTOCOL.md, "Errors").
//
//   IcowError
//   ├── InvalidInput                 bad input caught before anything reaches Redis
//   │   └── PayloadTooLarge          a tensor or job over the size caps
//   ├── BrokerUnavailable            Redis unreachable or the connection broke
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

export class IcowError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class InvalidInput extends IcowError {}
export class PayloadTooLarge extends InvalidInput {}
export class BrokerUnavailable extends IcowError {}

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

export const REMOTE_ERRORS = Object.freeze(
  Object.fromEntries([InvalidJob, ModelNotFound, JobExpired, JobCancelled, InternalError].map((c) => [c.remoteType, c])),
);

/** The error for a failure result: a known exc_type maps to its class, others stay RemoteError. */
export function remoteError(remoteType, message, jobId = null) {
  const Cls = REMOTE_ERRORS[remoteType] ?? RemoteError;
  return new Cls(message, { jobId, remoteType });
}
