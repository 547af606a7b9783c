// ICOW for Node.js: submit ONNX inference jobs through Redis and read their results.
// The wire format is specified in docs/PROTOCOL.md (protocol version 1).

export { Client, Job, decodeResult, outputRefs } from './client.js';
export {
  BrokerUnavailable,
  IcowError,
  InternalError,
  InvalidInput,
  InvalidJob,
  JobCancelled,
  JobExpired,
  JobNotFound,
  JobTimeout,
  ModelNotFound,
  NotFound,
  PayloadTooLarge,
  QueueFull,
  REMOTE_ERRORS,
  RemoteError,
  remoteError,
} from './errors.js';
export { Float64, decode as msgpackDecode, encode as msgpackEncode } from './msgpack.js';
export {
  PROTOCOL_VERSION,
  SUBMIT_SCRIPT,
  celeryMessage,
  failureOf,
  jobEnvelope,
  keys,
  parseMeta,
} from './protocol.js';
export { ALL_DATATYPES, BYTES, DATATYPES, decode as decodeTensor, encode as encodeTensor, halfToNumbers } from './tensor.js';
