// ICOW for Node.js: submit ONNX inference jobs through Redis and read their results.
// The wire format is specified in docs/PROTOCOL.md (protocol version 1).

export { Bulk, PRIORITY_BATCH, split as splitBulk } from './bulk.js';
export { Client, DEFAULT_TIMEOUT_S, DURABLE_WAIT_MS, Job, decodeResult, jobInfo, outputRefs, statusOf } from './client.js';
export { isSentinel, parseSentinel, redact } from './connection.js';
export {
  BrokerUnavailable,
  NotDurable,
  PermissionDenied,
  ClientClosed,
  IcowError,
  InternalError,
  InvalidInput,
  InvalidJob,
  JobCancelled,
  JobExpired,
  JobIdConflict,
  JobNotFound,
  JobTimeout,
  ModelNotFound,
  NoResultYet,
  NotFound,
  PayloadTooLarge,
  QueueFull,
  REMOTE_ERRORS,
  RemoteError,
  remoteError,
} from './errors.js';
export { Float64, decode as msgpackDecode, encode as msgpackEncode } from './msgpack.js';
export {
  CANCEL_REQUEST,
  PROTOCOL_VERSION,
  SUBMIT,
  cancelRequestCall,
  celeryMessage,
  failureOf,
  jobDigest,
  jobEnvelope,
  jobIdForToken,
  keys,
  parseMeta,
  parseReply,
  submitCall,
  submitReply,
} from './protocol.js';
export { ALL_DATATYPES, BYTES, DATATYPES, asStrings, decode as decodeTensor, encode as encodeTensor, halfToNumbers } from './tensor.js';
