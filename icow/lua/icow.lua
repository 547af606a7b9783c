#!lua name=icow
-- ICOW's Redis Functions: the only server-side code ICOW runs. Loaded by workers (or
-- `icow admin install`) with FUNCTION LOAD REPLACE; called with FCALL by clients (icow_submit,
-- icow_cancel_request) and workers (the rest). Each function touches only the keys it is
-- given and never parses a message body: a take costs O(1) per message whatever its size.
-- Every command inside runs under the caller's ACL rules (icow/keys.py).
-- docs/PROTOCOL.md section 4 specifies the client functions for other languages.

local LIBRARY_VERSION = '__ICOW_LIBRARY_SHA__'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- icow_submit: check that the target is served and its backlog limit, then queue jobs.
-- KEYS: [1] icow:limits, [2] icow:live:<m>, [3] icow:wake:<queue>, [4..7] the queue's four
--       priority lists, then per job its list and its claim-checked input keys (already SET).
-- ARGV: [1] model, [2] version ('' = latest), [3] require a live worker ('1'/'0'),
--       [4] number of jobs, then per job: message, number of input keys.
-- Returns {queued, depth, limit (-1: none), served (1/0)}. Jobs 1..queued were queued (a
-- prefix, in order); the input keys of the others are deleted.
-- Job digests (docs/PROTOCOL.md 8.4; optional, for caller-chosen ids): after all of the above,
-- KEYS per job icow:digest:<id>, ARGV per job its digest ('' = none) and that key's TTL. A job
-- whose id already holds another digest is not queued (its input keys are deleted) and takes
-- no place in the limit; 'queued' then counts the others (a prefix of them). The reply then
-- has one code per job after the four: 0 queued as new (or no digest / not reached), 1 queued,
-- its id already held this digest (a resubmission), 2 refused: the id holds another digest.
local MAX_DIGEST_TTL_S = 2592000 + 604800
local function digest_args(keys, args, n, kend)
  if #args == 4 + 2 * n then return nil end
  if #args ~= 4 + 4 * n or #keys ~= kend + n - 1 then
    return redis.error_reply('ICOW_INVALID icow_submit: digests need one key, digest and TTL per job')
  end
  for j = 1, n do
    local d, ttl = args[3 + 2 * n + 2 * j], args[4 + 2 * n + 2 * j]
    local t = string.match(ttl, '^[1-9][0-9]*$') and tonumber(ttl)
    if not (d == '' or (#d == 64 and string.match(d, '^[0-9a-f]+$'))) or not t or t > MAX_DIGEST_TTL_S then
      return redis.error_reply('ICOW_INVALID icow_submit: a digest is 64 lowercase hex (or empty), its TTL 1..' .. MAX_DIGEST_TTL_S)
    end
  end
  return true
end

local function submit(keys, args)
  local served = 1
  if args[3] == '1' then
    -- icow:live:<m> members are '<version>:<worker>' (and '<version>:<worker>:latest' for the
    -- version a worker offers to unpinned jobs), scored with their expiry.
    local members = redis.call('ZRANGE', keys[2], now_ms(), '+inf', 'BYSCORE')
    served = 0
    if args[2] == '' then
      if #members > 0 then served = 1 end
    else
      local prefix = args[2] .. ':'
      for _, m in ipairs(members) do
        if m == args[2] or string.sub(m, 1, #prefix) == prefix then
          served = 1
          break
        end
      end
    end
  end
  local limit = tonumber(redis.call('HGET', keys[1], args[1]) or '')
  local depth = 0
  if limit then
    for i = 4, 7 do depth = depth + redis.call('LLEN', keys[i]) end
  end
  local n = tonumber(args[4])
  local kend = 8
  for j = 1, n do kend = kend + 1 + tonumber(args[4 + 2 * j]) end
  local digests = digest_args(keys, args, n, kend)
  if type(digests) == 'table' then return digests end  -- the error reply
  local codes = {}
  local k, a, queued = 8, 5, 0
  for j = 1, n do
    local nblobs = tonumber(args[a + 1])
    local code = 0
    if served ~= 0 and not (limit and depth >= limit) and digests then
      local d = args[3 + 2 * n + 2 * j]
      if d ~= '' then
        local held = redis.call('GET', keys[kend + j - 1])
        if not held then
          redis.call('SET', keys[kend + j - 1], d, 'EX', args[4 + 2 * n + 2 * j])
        elseif held == d then
          code = 1
        else
          code = 2
        end
      end
    end
    codes[j] = code
    if served == 0 or (limit and depth >= limit) or code == 2 then
      for b = 1, nblobs do redis.call('DEL', keys[k + b]) end
    else
      redis.call('LPUSH', keys[k], args[a])
      depth = depth + 1
      queued = queued + 1
    end
    k = k + 1 + nblobs
    a = a + 2
  end
  if queued > 0 then redis.call('ZADD', keys[3], 0, '1') end
  local out = {queued, depth, limit or -1, served}
  if digests then
    for j = 1, n do out[4 + j] = codes[j] end
  end
  return out
end

-- icow_cancel_request: ask the fleet to cancel a job. KEYS: [1] icow:cancels.
-- ARGV: [1] the job's cancel token, [2] the reply list to answer on, [3] (optional) the job's
-- result TTL in seconds, kept by its JobCancelled result. Returns 1. A malformed argument is
-- refused with an error starting 'ICOW_INVALID' (nothing is queued): a request no worker would
-- act on must not leave its caller waiting for an answer that never comes.
local MAX_TTL_S = 2592000
local function cancel_request(keys, args)
  local token, reply, ttl = args[1], args[2], args[3]
  if #args < 2 or #args > 3 or #token ~= 32 or not string.match(token, '^[0-9a-f]+$') then
    return redis.error_reply('ICOW_INVALID a cancel token is 32 lowercase hex characters')
  end
  if #reply ~= 43 or not string.match(reply, '^icow:reply:[0-9a-f]+$') then
    return redis.error_reply('ICOW_INVALID the reply list must be icow:reply:<32 lowercase hex>')
  end
  local member = token .. ' ' .. reply
  if ttl ~= nil then
    local n = string.match(ttl, '^[1-9][0-9]*$') and tonumber(ttl)
    if not n or n > MAX_TTL_S then
      return redis.error_reply('ICOW_INVALID the result TTL must be an integer in 1..' .. MAX_TTL_S)
    end
    member = member .. ' ' .. ttl
  end
  redis.call('ZADD', keys[1], now_ms(), member)
  return 1
end

-- icow_take (worker): move waiting messages into a new in-flight list, atomically.
-- KEYS: [1] icow:runs:<w>, [2] icow:leases, [3] the new run list, then the candidate lists
--       (in the order to serve them), then one wake key per candidate list.
-- ARGV: [1] worker, [2] lease ms, [3] number of lists, [4] largest message returned whole,
--       then per list the most messages to take from it.
-- Takes from the first non-empty list only (one take = one queue, one priority). Returns
-- {list index or 0, then per message: the message, or {length, first 512 bytes} if larger
-- than ARGV[4]}. Re-arms the wake marker of every queue that still has messages. The jobs are
-- claimed with icow_claim before they run (their keys are only known once they are read).
local function take(keys, args)
  local n = tonumber(args[3])
  local cap = tonumber(args[4])
  local out = {0}
  local function entry(m)
    if #m > cap then return {#m, string.sub(m, 1, 512)} end
    return m
  end
  for i = 1, n do
    local list = keys[3 + i]
    local want = tonumber(args[4 + i])
    local m = want > 0 and redis.call('LMOVE', list, keys[3], 'RIGHT', 'LEFT') or false
    if m then
      out[1] = i
      redis.call('HSET', keys[1], keys[3], list)
      redis.call('ZADD', keys[2], now_ms() + tonumber(args[2]), args[1])
      local got = 1
      while true do
        out[#out + 1] = entry(m)
        if got >= want then break end
        m = redis.call('LMOVE', list, keys[3], 'RIGHT', 'LEFT')
        if not m then break end
        got = got + 1
      end
      break
    end
  end
  local armed = {}
  for i = 1, n do
    local w = keys[3 + n + i]
    if not armed[w] and redis.call('LLEN', keys[3 + i]) > 0 then
      redis.call('ZADD', w, 0, '1')
      armed[w] = true
    end
  end
  return out
end

-- icow_claim (worker): before running, per job: already answered? count the delivery, mark
-- it running. KEYS: per job its result key, state key, tries key. ARGV: [1] jobs, [2] tries
-- TTL, then per job its state TTL. Returns per job {answered (0/1), deliveries so far}.
local function claim(keys, args)
  local out = {}
  for j = 1, tonumber(args[1]) do
    local k = 3 * (j - 1)
    local answered = redis.call('EXISTS', keys[k + 1])
    local tries = redis.call('INCR', keys[k + 3])
    redis.call('EXPIRE', keys[k + 3], args[2])
    if answered == 0 then
      redis.call('SET', keys[k + 2], 'running', 'EX', args[2 + j])
    end
    out[#out + 1] = answered
    out[#out + 1] = tries
  end
  return out
end

-- icow_answer (worker): the one writer of results. KEYS: [1] icow:runs:<w>, then the run
-- lists to ack, then per job its result key, state key and reply list ('' for none).
-- ARGV: [1] acks, [2] jobs, [3] extra TTL of the 'done' state, then per job meta and TTL.
-- SET NX decides each job's first answer; only it is published and pushed. Returns per job 1/0.
-- A reply list keeps its newest REPLY_MAX entries (entries are hints: results stay in their keys).
local REPLY_MAX = 10000
local function answer(keys, args)
  local nacks, n, extra = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local out = {}
  for j = 1, n do
    local k, a = 1 + nacks + 3 * (j - 1), 3 + 2 * (j - 1)
    local meta, ttl = args[a + 1], tonumber(args[a + 2])
    if redis.call('SET', keys[k + 1], meta, 'NX', 'EX', ttl) then
      redis.call('SET', keys[k + 2], 'done', 'EX', ttl + extra)
      redis.call('PUBLISH', keys[k + 1], meta)
      if keys[k + 3] ~= '' then
        redis.call('RPUSH', keys[k + 3], meta)
        redis.call('LTRIM', keys[k + 3], -REPLY_MAX, -1)
        if redis.call('TTL', keys[k + 3]) < ttl then redis.call('EXPIRE', keys[k + 3], ttl) end
      end
      out[j] = 1
    else
      out[j] = 0
    end
  end
  for i = 1, nacks do
    redis.call('DEL', keys[1 + i])
    redis.call('HDEL', keys[1], keys[1 + i])
  end
  return out
end

-- icow_cancel (worker): answer a verified cancel request. KEYS: [1] result, [2] state,
-- [3] bell. ARGV: [1] JobCancelled meta, [2] result TTL, [3] extra TTL of 'done', [4] bell TTL.
-- Returns 1 cancelled, 0 already answered, -1 running.
local function cancel(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then return 0 end
  local state = redis.call('GET', keys[2])
  if state == 'running' then return -1 end
  if state == 'done' then return 0 end
  local ttl = tonumber(args[2])
  redis.call('SET', keys[1], args[1], 'NX', 'EX', ttl)
  redis.call('SET', keys[2], 'done', 'EX', ttl + tonumber(args[3]))
  redis.call('PUBLISH', keys[1], args[1])
  redis.call('RPUSH', keys[3], args[1])
  redis.call('EXPIRE', keys[3], args[4])
  return 1
end

-- icow_renew (worker, every heartbeat): renew the worker's lease and the liveness of the
-- versions it serves. KEYS: [1] icow:leases, then icow:live:<m> per model. ARGV: [1] worker,
-- [2] lease ms, [3] live ms, then per model: number of versions, the versions, the version it
-- offers to unpinned jobs (0: none). Members '<v>:<worker>' and '<v>:<worker>:latest'; this
-- worker's members for versions it no longer serves are removed at once.
local function renew(keys, args)
  local now = now_ms()
  local worker = args[1]
  redis.call('ZADD', keys[1], now + tonumber(args[2]), worker)
  local expiry = now + tonumber(args[3])
  local a = 4
  for i = 2, #keys do
    local nv = tonumber(args[a])
    local want = {}
    for v = 1, nv do want[args[a + v] .. ':' .. worker] = true end
    local offer = args[a + nv + 1]
    if offer ~= '0' then want[offer .. ':' .. worker .. ':latest'] = true end
    local suffix, suffix_l = ':' .. worker, ':' .. worker .. ':latest'
    for _, m in ipairs(redis.call('ZRANGE', keys[i], 0, -1)) do
      local mine = string.sub(m, -#suffix) == suffix or string.sub(m, -#suffix_l) == suffix_l
      if mine and not want[m] then redis.call('ZREM', keys[i], m) end
    end
    for m, _ in pairs(want) do redis.call('ZADD', keys[i], expiry, m) end
    redis.call('ZREMRANGEBYSCORE', keys[i], '-inf', now - 60000)
    a = a + 2 + nv
  end
  return now
end

-- icow_expired (worker): workers whose lease ran out. KEYS: [1] icow:leases.
local function expired(keys, args)
  return redis.call('ZRANGE', keys[1], '-inf', now_ms(), 'BYSCORE')
end

-- icow_requeue (worker, the reaper): put a dead worker's in-flight messages back, oldest at
-- the consuming end. KEYS: [1] icow:runs:<w>, [2] the run list, [3] its queue list, [4] that
-- queue's wake key. Returns the number of messages put back.
local function requeue(keys, args)
  local moved = 0
  while redis.call('LMOVE', keys[2], keys[3], 'LEFT', 'RIGHT') do moved = moved + 1 end
  redis.call('HDEL', keys[1], keys[2])
  if moved > 0 then redis.call('ZADD', keys[4], 0, '1') end
  return moved
end

-- icow_forget (worker, the reaper): drop a dead worker's lease once nothing is in flight.
-- KEYS: [1] icow:leases, [2] icow:runs:<w>. ARGV: [1] worker.
local function forget(keys, args)
  if redis.call('HLEN', keys[2]) == 0 then
    redis.call('ZREM', keys[1], args[1])
    return 1
  end
  return 0
end

-- icow_peek (read only: `icow status`, the exporter): queue lists without consuming them.
-- KEYS: the queue lists. ARGV: [1] how many leading bytes of each oldest message to return.
-- Returns per key its length and the prefix of its right-most (oldest) message ('' if empty).
local function peek(keys, args)
  local out = {}
  local cut = tonumber(args[1])
  for _, k in ipairs(keys) do
    out[#out + 1] = redis.call('LLEN', k)
    local m = redis.call('LINDEX', k, -1)
    if m then out[#out + 1] = string.sub(m, 1, cut) else out[#out + 1] = '' end
  end
  return out
end

local function version(keys, args)
  return LIBRARY_VERSION
end

redis.register_function('icow_submit', submit)
redis.register_function('icow_cancel_request', cancel_request)
redis.register_function('icow_take', take)
redis.register_function('icow_claim', claim)
redis.register_function('icow_answer', answer)
redis.register_function('icow_cancel', cancel)
redis.register_function('icow_renew', renew)
redis.register_function('icow_expired', expired)
redis.register_function('icow_requeue', requeue)
redis.register_function('icow_forget', forget)
redis.register_function{function_name = 'icow_peek', callback = peek, flags = {'no-writes'}}
redis.register_function{function_name = 'icow_version', callback = version, flags = {'no-writes'}}
